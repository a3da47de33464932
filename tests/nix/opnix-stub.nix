# OpNix's options as the btrsync module sees them (brizzbuzz/opnix: services.onepassword-secrets,
# secretPaths.<name> is the runtime path of a secret); declared only in the OpNix example.
{ lib, config, ... }:
let inherit (lib) mkOption types; in
{
  options.services.onepassword-secrets = {
    enable = mkOption { type = types.bool; default = false; };
    tokenFile = mkOption { type = types.str; default = "/etc/opnix-token"; };
    secrets = mkOption { type = types.attrsOf (types.attrsOf types.anything); default = { }; };
    secretPaths = mkOption { type = types.attrsOf types.str; readOnly = true; };
  };
  config.services.onepassword-secrets.secretPaths =
    lib.mapAttrs (n: s: s.path or "/var/lib/opnix/secrets/${n}") config.services.onepassword-secrets.secrets;
}
