# Evaluate services.btrsync with nixpkgs' real module system; print what the tests check.
#   nix-instantiate --eval --strict --json tests/nix/eval.nix --arg lib 'import LIB' \
#     --argstr btrsyncPrefix /work/main/.venv --arg modules '[ ./example.nix ]'
{ lib, btrsyncPrefix, modules }:
let
  eval = lib.evalModules {
    modules = [ ../../nix/modules/backup (import ./stubs.nix { inherit btrsyncPrefix; }) ] ++ modules;
  };
  c = eval.config;
  failed = map (a: a.message) (lib.filter (a: !a.assertion) c.assertions);
in
if failed != [ ] then { assertions = failed; } else {
  assertions = [ ];
  settings = c.services.btrsync.settings;
  services = lib.mapAttrs (_: s: removeAttrs s [ ]) c.systemd.services;
  timers = c.systemd.timers;
  tmpfiles = c.systemd.tmpfiles.rules;
  etc = lib.mapAttrs (_: e: { source = e.source.name; script = e.source.script or null; }) c.environment.etc;
  prometheus = {
    ruleFiles = map toString c.services.prometheus.ruleFiles;
    inherit (c.services.prometheus.exporters.node) enabledCollectors extraFlags;
  };
  auditLog = c.services.btrsync.retention.auditLog;
  users = c.users.users;
  sshForcedCommand = c.services.btrsync.sshAccess.forcedCommand.text or null;
  groups = c.users.groups;
}
