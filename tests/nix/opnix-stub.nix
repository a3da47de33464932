# OpNix's options as the btrsync module and docs/nixos.md use them, declared as brizzbuzz/opnix
# v0.11.0 declares them (nix/module.nix): services.onepassword-secrets.{enable, tokenFile,
# secrets.<name>.{reference, kind, path, owner, group, mode}, secretPaths}; kind is "field" or
# "file" (a Document or an attachment, as raw bytes), so a typo there fails the evaluation here as
# it would with OpNix.  secretPaths.<name> is the runtime path: path, or outputDir/<name>.
{ lib, config, ... }:
let inherit (lib) mkOption types; in
{
  options.services.onepassword-secrets = {
    enable = mkOption { type = types.bool; default = false; };
    tokenFile = mkOption { type = types.path; default = "/etc/opnix-token"; };
    outputDir = mkOption { type = types.str; default = "/var/lib/opnix/secrets"; };
    secrets = mkOption {
      type = types.attrsOf (types.submodule {
        options = {
          reference = mkOption { type = types.str; };
          kind = mkOption { type = types.enum [ "field" "file" ]; default = "field"; };
          path = mkOption { type = types.nullOr types.str; default = null; };
          owner = mkOption { type = types.str; default = "root"; };
          group = mkOption { type = types.str; default = "root"; };
          mode = mkOption { type = types.str; default = "0600"; };
        };
      });
      default = { };
    };
    secretPaths = mkOption { type = types.attrsOf types.str; readOnly = true; };
  };
  config.services.onepassword-secrets.secretPaths = let cfg = config.services.onepassword-secrets; in
    lib.mapAttrs (n: s: if s.path != null then s.path else "${cfg.outputDir}/${n}") cfg.secrets;
}
