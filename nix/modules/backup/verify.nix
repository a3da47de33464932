# Verification: what each job's runs check of the backups they sent (jobs.<name>.verify, and per
# target), and verifications with timers of their own (services.btrsync.verifications.<name>:
# `btrsync verify` at a level, e.g. a weekly data check of a seventh of B2 or a monthly restore
# drill).
{ config, lib, pkgs, ... }:
let
  inherit (lib) mkOption types literalExpression;
  T = import ./types.nix { inherit lib; };
  cfg = config.services.btrsync;
  levels = [ "none" "catalog" "data" "stream" "restore" ];

  verifyOptions = {
    level = mkOption { type = types.enum levels; default = "catalog"; description = "Level at which a run verifies the backups it sent (docs/verify.md)."; };
    sample = mkOption { type = types.nullOr types.str; default = null; example = "5%"; description = "data/stream: read a random sample of their segments (10%, 2G) instead of all."; };
    drillEvery = mkOption { type = types.nullOr types.str; default = null; example = "30d"; description = "A restore drill of the newest backup of each subvolume when the last one is older."; };
    drillLevel = mkOption { type = types.enum [ "stream" "restore" ]; default = "restore"; description = "Level of the drill."; };
    scratchDir = mkOption { type = types.str; default = "/var/tmp/btrsync-drills"; description = "Where restore drills make their scratch image."; };
  };
  verifySettings = v: T.compact {
    inherit (v) level sample;
    drill_every = v.drillEvery;
    drill_level = v.drillLevel;
    scratch_dir = v.scratchDir;
  };

  verificationModule = { name, ... }: {
    options = {
      target = mkOption { type = types.str; example = "b2"; description = "The target (a `services.btrsync.targets` name) to verify."; };
      level = mkOption { type = types.enum (lib.remove "none" levels); default = "data"; description = "`btrsync verify --level`."; };
      sample = mkOption { type = types.nullOr types.str; default = null; example = "10%"; description = "`--sample`: a random sample (10%, 50G); with level restore, N random drills."; };
      subset = mkOption { type = types.nullOr types.str; default = null; example = "3/7"; description = "`--subset n/t`: a stable slice of the segments."; };
      olderThan = mkOption { type = types.nullOr types.str; default = null; example = "30d"; description = "`--older-than`: only segments not verified within this."; };
      maxDuration = mkOption { type = types.nullOr types.str; default = null; example = "2h"; description = "`--max-duration`: start no new segment after this."; };
      snapshotDirs = mkOption { type = types.listOf types.str; default = [ ]; description = "`--snapshot-dir`: local snapshots to compare restore drills with."; };
      scratchDir = mkOption { type = types.str; default = "/var/tmp/btrsync-drills"; description = "`--scratch-dir` of restore drills."; };
      schedule = mkOption { type = types.str; default = "weekly"; description = "`OnCalendar=` of its timer."; };
      randomizedDelaySec = mkOption { type = types.str; default = "1h"; description = "`RandomizedDelaySec=` of its timer."; };
    };
  };

  btrsync = "${cfg.package}/bin/btrsync";
  verifyService = name: v:
    let
      url = cfg.targets.${v.target}.url or v.target;
      dir = T.fileTargetDir url;
      restore = v.level == "restore";
      network = lib.optional (dir == null) "network-online.target";
      argv = [ btrsync "--config" "/etc/btrsync/config.toml" ];
      rest = [ "verify" "--from" v.target "--level" v.level ]
        ++ lib.optionals (v.sample != null) [ "--sample" v.sample ]
        ++ lib.optionals (v.subset != null) [ "--subset" v.subset ]
        ++ lib.optionals (v.olderThan != null) [ "--older-than" v.olderThan ]
        ++ lib.optionals (v.maxDuration != null) [ "--max-duration" v.maxDuration ]
        ++ lib.optionals restore ([ "--scratch-dir" v.scratchDir ] ++ lib.concatMap (d: [ "--snapshot-dir" d ]) v.snapshotDirs);
      metrics = lib.optional cfg.monitoring.enable cfg.monitoring.metricsDir;
      # as the job units: a 'noauto' backup disk (and the snapshots a drill compares with) is
      # mounted for the verification, which otherwise finds an empty mount point
      mounts = lib.unique (lib.optional (dir != null) dir ++ lib.optionals restore v.snapshotDirs);
    in {
      description = "btrsync verification ${name} of ${v.target} (${v.level})";
      wants = network ++ cfg.secretsUnits;
      after = network ++ cfg.secretsUnits;
      onFailure = cfg.onFailure;
      unitConfig = lib.optionalAttrs (mounts != [ ]) {
        RequiresMountsFor = lib.concatStringsSep " " (map (T.quoted "") mounts);
      };
      restartIfChanged = false;
      serviceConfig = T.hardening cfg // {
        Type = "oneshot";
        ExecStart = lib.concatStringsSep " " (map T.execArg argv
          ++ lib.optionals (cfg.keyFile != null) [ "--key-file" "%d/key" ] ++ map T.execArg rest);
        LoadCredential = map (lib.replaceStrings [ "%" ] [ "%%" ])
          (lib.optional (cfg.keyFile != null) "key:${toString cfg.keyFile}" ++ T.targetCredentials cfg v.target);
        KillMode = "mixed";
        TimeoutStopSec = "5min";
        ReadWritePaths = lib.concatStringsSep " " (map (T.quoted "-") (lib.unique ([ cfg.stateDir ] ++ metrics
          ++ lib.optional (dir != null) dir ++ lib.optional restore v.scratchDir)));
        CapabilityBoundingSet = lib.concatStringsSep " " (T.baseCaps ++ lib.optionals restore T.receiveCaps);
      } // lib.optionalAttrs (restore && T.privateTmp v.scratchDir) {
        BindPaths = T.quoted "-" v.scratchDir;
      };
    };
in
{
  options.services.btrsync = {
    jobs = mkOption {
      type = types.attrsOf (types.submodule {
        options.verify = verifyOptions;
        options.targets = mkOption {
          type = types.attrsOf (types.submodule {
            options.verify = mkOption {
              type = types.nullOr (types.submodule { options = verifyOptions; });
              default = null;
              description = "This target's verification (default: the job's).";
            };
          });
        };
      });
    };
    verifications = mkOption {
      type = types.attrsOf (types.submodule verificationModule);
      default = { };
      example = literalExpression ''
        {
          b2-weekly = { target = "b2"; level = "data"; subset = "1/7"; schedule = "Sun 03:00"; };
          nas-drill = { target = "nas"; level = "restore"; sample = "1"; schedule = "monthly"; snapshotDirs = [ "/.snapshots" ]; };
        }'';
      description = ''
        `btrsync verify` on timers of their own: `btrsync-verify-<name>.service` and `.timer`
        (a failure is exit 4, damage found; the unit then fails).
      '';
    };
  };

  config = lib.mkIf cfg.enable {
    services.btrsync.settings.jobs = lib.mapAttrs (_: j: {
      verify = verifySettings j.verify;
      targets = lib.mapAttrs (_: jt: lib.optionalAttrs (jt.verify != null) { verify = verifySettings jt.verify; }) j.targets;
    }) cfg.jobs;

    systemd.services = lib.mapAttrs' (n: v: lib.nameValuePair "btrsync-verify-${n}" (verifyService n v)) cfg.verifications;
    systemd.tmpfiles.rules = lib.unique (lib.mapAttrsToList (_: v: "d ${v.scratchDir} 0700 root root -")
      (lib.filterAttrs (_: v: v.level == "restore") cfg.verifications));
    systemd.timers = lib.mapAttrs' (n: v: lib.nameValuePair "btrsync-verify-${n}" {
      description = "btrsync verification ${n} (${v.schedule})";
      wantedBy = [ "timers.target" ];
      timerConfig = { OnCalendar = v.schedule; Persistent = true; RandomizedDelaySec = v.randomizedDelaySec; Unit = "btrsync-verify-${n}.service"; };
    }) cfg.verifications;

    assertions = lib.concatLists (lib.mapAttrsToList (n: v: [ {
      assertion = cfg.targets ? ${v.target} || lib.hasInfix "://" v.target;
      message = "services.btrsync.verifications.${n}.target = \"${v.target}\": no target of that name in services.btrsync.targets.";
    } {
      # it names btrsync-verify-<name>.service: systemd would not load a unit of another name, and the
      # verification would silently never run
      assertion = builtins.match "[A-Za-z0-9_][A-Za-z0-9_-]{0,63}" n != null;
      message = "services.btrsync.verifications.\"${n}\": a verification name is 1-64 letters, digits, '-' and '_', not starting with '-' (it names the units btrsync-verify-<name>).";
    } {
      # btrsync verify refuses a share with --level restore (exit 2): each timer run would fail
      assertion = v.level != "restore" || v.sample == null || builtins.match "[0-9]*[1-9][0-9]*" v.sample != null;
      message = "services.btrsync.verifications.${n}.sample = \"${toString v.sample}\" with level \"restore\": give the number of backups to drill (e.g. \"1\"), not a share.";
    } ]) cfg.verifications);
  };
}
