# The option declarations of services.btrsync as a list (nixpkgs' optionAttrSetToDocList, what the
# NixOS manual is made from); scripts/nixos-option-reference renders it into docs/nixos.md.
{ lib }:
let
  eval = lib.evalModules {
    modules = [
      ../modules/backup
      { options.assertions = lib.mkOption { type = lib.types.listOf lib.types.unspecified; default = [ ]; }; }
      { _module.check = false; }
      # no nixpkgs here: what the declarations read of pkgs (pkgs.formats.toml's type, as nixpkgs has it)
      { _module.args.pkgs = {
          formats.toml = { }: { type = with lib.types; let v = nullOr (oneOf [ bool int float str path (attrsOf v) (listOf v) ]) // { description = "TOML value"; }; in v; };
        }; }
    ];
  };
  visible = o: (o.visible or true) != false && !(o.internal or false);
in
map (o: { inherit (o) name description type readOnly; default = o.default or null; example = o.example or null; })
  (lib.filter visible (lib.optionAttrSetToDocList eval.options.services.btrsync))
