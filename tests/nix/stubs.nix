# The NixOS options services.btrsync sets or reads but does not declare, declared loosely (there is
# no nixpkgs checkout here, only its lib), and a stub `pkgs` for what the module calls at
# evaluation time.  The package stub points at the project's venv, so that the rendered units'
# ExecStart= names a real executable for `systemd-analyze verify`.
{ btrsyncPrefix }:
{ lib, ... }:
let
  inherit (lib) mkOption types;
  loose = mkOption { type = types.attrsOf types.anything; default = { }; };
  stubDrv = name: { type = "derivation"; inherit name; outPath = "/nix/store/00000000000000000000000000000000-${name}"; };
in
{
  options = {
    assertions = mkOption { type = types.listOf types.unspecified; default = [ ]; };
    warnings = mkOption { type = types.listOf types.str; default = [ ]; };
    systemd.services = loose;
    systemd.timers = loose;
    systemd.tmpfiles.rules = mkOption { type = types.listOf types.str; default = [ ]; };
    environment.etc = loose;
    environment.systemPackages = mkOption { type = types.listOf types.unspecified; default = [ ]; };
    users.users = loose;
    users.groups = loose;
    fileSystems = loose;  # docs/nixos.md's complete host: the backup disk
    services.postgresql.package = mkOption { type = types.anything; default = stubDrv "postgresql"; };
    services.prometheus.enable = mkOption { type = types.bool; default = false; };
    services.prometheus.ruleFiles = mkOption { type = types.listOf types.unspecified; default = [ ]; };
    services.prometheus.exporters.node.enable = mkOption { type = types.bool; default = false; };
    services.prometheus.exporters.node.enabledCollectors = mkOption { type = types.listOf types.str; default = [ ]; };
    services.prometheus.exporters.node.extraFlags = mkOption { type = types.listOf types.str; default = [ ]; };
  };
  config._module.args.pkgs = {
    callPackage = _: _: stubDrv "btrsync";
    # pkgs.formats.toml's type, as nixpkgs declares it (pkgs/pkgs-lib/formats.nix)
    formats.toml = { }: {
      generate = name: value: stubDrv name;
      type = with types; let valueType = nullOr (oneOf [ bool int float str path (attrsOf valueType) (listOf valueType) ]) // {
        description = "TOML value"; }; in valueType;
    };
    runCommand = name: env: script: stubDrv name // { inherit script; };
    writeText = name: text: stubDrv name;
    postgresql = stubDrv "postgresql";
    curl = stubDrv "curl";
    writeShellScript = name: text: stubDrv name // { inherit text; };
  } // lib.genAttrs [ "bash" "bubblewrap" "coreutils" "findutils" "rsync" ] stubDrv // {
  };
  config.services.btrsync.package = lib.mkDefault { type = "derivation"; name = "btrsync"; outPath = btrsyncPrefix; };
}
