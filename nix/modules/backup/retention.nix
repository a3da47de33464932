# services.btrsync.retention: GFS profiles per kind of data, for local snapshots and for targets
# (one policy for every target, overrides per target), which profile a job or subvolume uses,
# and where the audit log of every deletion is.
{ config, lib, ... }:
let
  inherit (lib) mkOption types literalExpression;
  T = import ./types.nix { inherit lib; };
  cfg = config.services.btrsync;
  rcfg = cfg.retention;

  profileModule = {
    options = {
      snapshots = mkOption { type = T.policy; default = { }; example = literalExpression "{ keepHourly = 24; keepDaily = 7; }"; description = "Local snapshots."; };
      backups = mkOption { type = T.policy; default = { }; example = literalExpression "{ keepDaily = 14; keepWeekly = 8; keepMonthly = 24; }"; description = "Every target without its own policy below."; };
      targets = mkOption { type = types.attrsOf T.policy; default = { }; example = literalExpression "{ b2 = { keepMonthly = 36; keepYearly = 5; }; }"; description = "Per target name: its own policy."; };
    };
  };
  profileSettings = p: T.compact {
    snapshots = if T.policyEmpty p.snapshots then null else T.policySettings p.snapshots;
    backups = if T.policyEmpty p.backups then null else T.policySettings p.backups;
  } // lib.optionalAttrs (p.targets != { }) { targets = lib.mapAttrs (_: T.policySettings) p.targets; };

  known = n: rcfg.profiles ? ${n};
  defined = if rcfg.profiles == { } then "none" else lib.concatStringsSep ", " (lib.attrNames rcfg.profiles);
  unknownProfile = where: n: { assertion = n == null || known n; message = "${where} = \"${toString n}\": no profile of that name in services.btrsync.retention.profiles (defined: ${defined})."; };
in
{
  options.services.btrsync = {
    retention = {
      timezone = mkOption { type = types.str; default = "UTC"; example = "Europe/Berlin"; description = "The calendar of every policy (days, weeks, months)."; };
      defaultProfile = mkOption { type = types.nullOr types.str; default = null; description = "Profile of subvolumes not listed in `subvolumes` (none: never pruned unless a job names one)."; };
      profiles = mkOption {
        type = types.attrsOf (types.submodule profileModule);
        default = { };
        example = literalExpression ''
          {
            standard = { snapshots = { keepHourly = 24; keepDaily = 7; }; backups = { keepDaily = 14; keepWeekly = 8; keepMonthly = 24; }; };
            databases = { snapshots.keepHourly = 48; backups = { keepWithin = "7d"; keepDaily = 30; }; };
          }'';
        description = "GFS retention profiles, one per kind of data (docs/retention.md).";
      };
      subvolumes = mkOption { type = types.attrsOf types.str; default = { }; example = { postgres = "databases"; }; description = "Subvolume name (the snapshot prefix) to profile."; };
      auditLog = mkOption {
        type = types.str;
        readOnly = true;
        default = "${cfg.stateDir}/audit.log";
        defaultText = literalExpression ''"''${config.services.btrsync.stateDir}/audit.log"'';
        description = "Where btrsync records every deletion and prune run (one JSON line each; also sent to the journal as `btrsync-audit`).  Follows `stateDir`.";
      };
    };
    jobs = mkOption {
      type = types.attrsOf (types.submodule {
        options.retention = mkOption { type = types.nullOr types.str; default = null; example = "standard"; description = "Retention profile of the job's snapshots and of every target without its own."; };
        options.targets = mkOption {
          type = types.attrsOf (types.submodule {
            options.retention = mkOption { type = types.nullOr types.str; default = null; description = "A profile for this target (default: the job's)."; };
            options.keep = mkOption { type = T.policy; default = { }; example = literalExpression "{ keepDaily = 7; keepMonthly = 36; }"; description = "An inline policy for this target instead of a profile."; };
          });
        };
      });
    };
  };

  config = lib.mkIf cfg.enable {
    services.btrsync.settings = {
      retention = T.compact {
        timezone = rcfg.timezone;
        default_profile = rcfg.defaultProfile;
        profiles = if rcfg.profiles == { } then null else lib.mapAttrs (_: profileSettings) rcfg.profiles;
        subvolumes = if rcfg.subvolumes == { } then null else rcfg.subvolumes;
      };
      jobs = lib.mapAttrs (_: j: T.compact { inherit (j) retention; } // {
        targets = lib.mapAttrs (_: jt: T.compact {
          retention = if !(T.policyEmpty jt.keep) then T.policySettings jt.keep else jt.retention;
        }) j.targets;
      }) cfg.jobs;
    };

    assertions = [ (unknownProfile "services.btrsync.retention.defaultProfile" rcfg.defaultProfile) ]
      ++ lib.mapAttrsToList (s: p: unknownProfile "services.btrsync.retention.subvolumes.${s}" p) rcfg.subvolumes
      ++ lib.concatLists (lib.mapAttrsToList (jn: j: [ (unknownProfile "services.btrsync.jobs.${jn}.retention" j.retention) ]
        ++ lib.concatLists (lib.mapAttrsToList (tn: jt: [
          (unknownProfile "services.btrsync.jobs.${jn}.targets.${tn}.retention" jt.retention)
          { assertion = jt.retention == null || T.policyEmpty jt.keep;
            message = "services.btrsync.jobs.${jn}.targets.${tn}: set retention (a profile) or keep (an inline policy), not both."; }
        ]) j.targets)) cfg.jobs);
  };
}
