# services.btrsync: btrfs snapshots, encrypted incremental backups to B2/S3, ssh and local
# targets, retention, verification and metrics, configured as jobs of btrsync (docs/nixos.md).
#
# This file holds the top-level options, writes /etc/btrsync/config.toml from the options
# (checked by `btrsync config check` when the system is built) and makes, per job, the units
# `btrsync systemd generate` makes (btrsync/jobs/systemd.py): a oneshot service and its timer,
# plus btrsync-on-failure@.service.  The other files add their part of the option tree.
{ config, lib, pkgs, ... }:
let
  inherit (lib) mkOption mkEnableOption mkIf types literalExpression;
  T = import ./types.nix { inherit lib; };
  cfg = config.services.btrsync;
  configPath = "/etc/btrsync/config.toml";
  btrsync = "${cfg.package}/bin/btrsync";

  hardening = T.hardening cfg;
  inherit (T) baseCaps receiveCaps;

  enabledJobs = lib.filterAttrs (_: j: j.enable) cfg.jobs;
  targetUrl = t: if cfg.targets ? ${t} then cfg.targets.${t}.url else t;
  metricsDir = if cfg.monitoring.enable then cfg.monitoring.metricsDir else null;

  # what a job's targets verify with (the target's own or the job's), as btrsync resolves it
  verifyOf = job: jt: if jt.verify != null then jt.verify else job.verify;
  drills = job: lib.any (jt: let v = verifyOf job jt; in (v.drillEvery != null && v.drillLevel == "restore") || v.level == "restore")
    (lib.attrValues job.targets);

  credentialsOf = job:
    lib.optional (cfg.keyFile != null) "key:${toString cfg.keyFile}"
    ++ lib.concatMap (T.targetCredentials cfg) (lib.attrNames job.targets);

  jobService = name: job:
    let
      urls = map targetUrl (lib.attrNames job.targets);
      localDirs = lib.filter (d: d != null) (map T.fileTargetDir urls);
      remote = lib.any (u: T.fileTargetDir u == null) urls;
      withDrills = drills job;
      writable = lib.unique ([ cfg.stateDir job.snapshotDir ] ++ lib.optional (metricsDir != null) metricsDir
        ++ lib.concatLists (map (t: [ ] ++ (let d = T.fileTargetDir (targetUrl t); in lib.optional (d != null) d)
        ++ lib.optional withDrills (verifyOf job job.targets.${t}).scratchDir) (lib.attrNames job.targets))
        ++ job.hooks.readWritePaths);
      scratch = lib.unique (lib.optionals withDrills (map (t: (verifyOf job job.targets.${t}).scratchDir) (lib.attrNames job.targets)));
      shared = lib.filter T.privateTmp scratch;
      # directory targets too: a 'noauto' backup disk is mounted for the run (as btrsync systemd generate)
      mounts = lib.unique ([ job.snapshotDir ] ++ job.subvolumes ++ localDirs);
      network = lib.optional remote "network-online.target";
      argv = [ btrsync "--config" configPath ];
      keyArgs = lib.optionals (cfg.keyFile != null) [ "--key-file" "%d/key" ];
      # targets.<name>.initialize: 'btrsync init --if-empty' first, in the same sandbox (as btrsync systemd generate)
      inits = map (t: lib.concatStringsSep " " (map T.execArg argv ++ keyArgs ++ map T.execArg [ "init" "--to" t "--if-empty" ]))
        (lib.filter (t: cfg.targets ? ${t} && cfg.targets.${t}.initialize) (lib.attrNames job.targets));
      run = lib.concatStringsSep " " (map T.execArg argv ++ keyArgs ++ [ "run" (T.execArg name) ]);
    in {
      description = "btrsync backup job ${name}";
      wants = network ++ cfg.secretsUnits;
      after = network ++ cfg.secretsUnits;
      onFailure = [ "btrsync-on-failure@%n.service" ] ++ cfg.onFailure;
      unitConfig.RequiresMountsFor = lib.concatStringsSep " " (map (T.quoted "") mounts);
      restartIfChanged = false; # a switch must not start a backup
      serviceConfig = hardening // {
        Type = "oneshot";
        ExecStart = run;
        LoadCredential = map (lib.replaceStrings [ "%" ] [ "%%" ]) (credentialsOf job);
        KillMode = "mixed";
        TimeoutStopSec = "5min";
        ReadWritePaths = lib.concatStringsSep " " (map (T.quoted "-") writable);
        CapabilityBoundingSet = lib.concatStringsSep " " (baseCaps ++ lib.optionals withDrills receiveCaps);
      } // lib.optionalAttrs (shared != [ ]) {
        BindPaths = lib.concatStringsSep " " (map (T.quoted "-") shared);
      } // lib.optionalAttrs (inits != [ ]) {
        ExecStartPre = inits;
      };
    };

  jobTimer = name: job: {
    description = "btrsync backup job ${name} (${job.schedule})";
    wantedBy = [ "timers.target" ];
    timerConfig = {
      OnCalendar = job.schedule;
      Persistent = job.persistent;
      RandomizedDelaySec = job.randomizedDelaySec;
      Unit = "btrsync-${name}.service";
    } // job.timerConfig;
  };

  failureService = {
    description = "btrsync: on_failure hooks of the failed unit %i";
    # hooks that notify over the network
    wants = [ "network-online.target" ];
    after = [ "network-online.target" ];
    serviceConfig = hardening // {
      Type = "oneshot";
      ExecStart = lib.concatStringsSep " " (map T.execArg [ btrsync "--config" configPath "systemd" "on-failure" ]) + " %i";
      # it runs the on_failure hooks of a killed run: they write where the job's hooks may
      ReadWritePaths = lib.concatStringsSep " " (map (T.quoted "-") (lib.unique ([ cfg.stateDir ]
        ++ lib.concatMap (j: j.hooks.readWritePaths) (lib.attrValues cfg.jobs))));
    };
  };

  settingsFormat = pkgs.formats.toml { };
  configFile = settingsFormat.generate "btrsync.toml" cfg.settings;
  # btrbk's pattern: the configuration is validated when the system is built (exit 2 fails it)
  checkedConfig = pkgs.runCommand "btrsync-config-checked" { } ''
    ${btrsync} --config ${configFile} config check > /dev/null
    cp ${configFile} $out
  '';

  secrets = [ { loc = "keyFile"; value = cfg.keyFile; } ]
    ++ lib.concatLists (lib.mapAttrsToList (n: t: [
      { loc = "targets.${n}.credentialsFile"; value = t.credentialsFile; }
      { loc = "targets.${n}.identityFile"; value = t.identityFile; }
    ]) cfg.targets);
  secretAssertions = lib.concatMap (s: lib.optionals (s.value != null) [
    { assertion = !builtins.isPath s.value;
      message = "services.btrsync.${s.loc} is a Nix path literal: it would be copied into the world-readable /nix/store. Give the runtime path as a string, e.g. \"/var/lib/opnix/secrets/btrsyncKey\" (see docs/nixos.md, Secrets)."; }
    { assertion = builtins.isPath s.value || !(lib.hasPrefix builtins.storeDir (toString s.value));
      message = "services.btrsync.${s.loc} = \"${toString s.value}\" is in the Nix store, which every user can read: keep the secret outside it (OpNix, agenix, sops-nix or a root-only file) and name its runtime path."; }
    { assertion = builtins.isPath s.value || lib.hasPrefix "/" s.value;
      message = "services.btrsync.${s.loc} = \"${toString s.value}\" must be an absolute path."; }
  ]) secrets;

  # every leaf of `settings` (what the module wrote and what the user added), with where it is
  leaves = path: v:
    if builtins.isAttrs v && !(lib.isDerivation v) then
      lib.concatLists (lib.mapAttrsToList (k: x: leaves (path ++ [ k ]) x) v)
    else if builtins.isList v then lib.concatLists (lib.imap0 (i: x: leaves (path ++ [ (toString i) ]) x) v)
    else [ { loc = lib.concatStringsSep "." path; key = lib.last ([ "" ] ++ path); value = v; } ];
  # a path literal anywhere in `settings` is copied into the store by the TOML generator, and a
  # secret file setting must not name a file in it (what the options set is asserted above)
  secretKeys = [ "key_file" "credentials_file" "identity_file" ];
  fromOptions = map (s: toString s.value) (lib.filter (s: s.value != null && !builtins.isPath s.value) secrets);
  settingsAssertions = lib.concatMap (l: [
    { assertion = !builtins.isPath l.value;
      message = "services.btrsync.settings.${l.loc} is a Nix path literal: it would be copied into the world-readable /nix/store. Give the runtime path as a string (see docs/nixos.md, Secrets)."; }
    { assertion = !(builtins.isString l.value && builtins.elem l.key secretKeys && !(builtins.elem l.value fromOptions)
                    && lib.hasPrefix builtins.storeDir l.value);
      message = "services.btrsync.settings.${l.loc} = \"${toString l.value}\" is in the Nix store, which every user can read: keep the secret outside it and name its runtime path."; }
  ]) (leaves [ ] cfg.settings);

  validName = n: builtins.match "[A-Za-z0-9_][A-Za-z0-9_-]{0,63}" n != null;
  jobsWithTargets = lib.attrNames (lib.filterAttrs (_: j: j.targets != { }) cfg.jobs);
in
{
  imports = [ ./snapshot.nix ./remote.nix ./retention.nix ./verify.nix ./monitoring.nix ./ssh-access.nix ];

  options.services.btrsync = {
    enable = mkEnableOption "btrsync, btrfs snapshots and encrypted incremental backups";

    package = mkOption {
      type = types.package;
      default = pkgs.callPackage ../../package.nix { };
      defaultText = literalExpression "pkgs.callPackage ./nix/package.nix { }";
      description = "The btrsync package; its `bin/btrsync` runs every unit.";
    };

    keyFile = T.secretPath ''
      Runtime path of the repository key file (`btrsync key generate FILE` writes 44 base64
      characters; 64 hex digits or 32 raw bytes are read too; root-only).  A string, never a Nix path: a path literal or a `/nix/store` path is
      refused, because the store is world-readable.  Passed to every unit with `LoadCredential=`
      (`--key-file %d/key`).  Required when a job has targets.  With OpNix:
      `config.services.onepassword-secrets.secretPaths.btrsyncKey`.
    '';

    stateDir = mkOption {
      type = types.str;
      default = "/var/lib/btrsync";
      description = "State directory (catalog cache, job records, locks, the audit log); created by tmpfiles, mode 0700.";
    };

    maxParallelJobs = mkOption {
      type = types.ints.between 1 64;
      default = 1;
      description = "Jobs that push at once on this host; the others queue.";
    };

    secretsUnits = mkOption {
      type = types.listOf types.str;
      default = lib.optional (config.services.onepassword-secrets.enable or false) "opnix-secrets.service";
      defaultText = literalExpression ''lib.optional config.services.onepassword-secrets.enable "opnix-secrets.service"'';
      description = ''
        Units that produce the secret files: every btrsync unit `Wants=` and is ordered `After=`
        them.  The OpNix secrets service when `services.onepassword-secrets` is enabled.
      '';
    };

    nice = mkOption {
      type = types.ints.between (-20) 19;
      default = 10;
      description = "`Nice=` of every btrsync unit (as services.btrbk.niceness).";
    };

    ioSchedulingClass = mkOption {
      type = types.enum [ "idle" "best-effort" "realtime" ];
      default = "best-effort";
      description = ''
        `IOSchedulingClass=` of every btrsync unit (as services.btrbk.ioSchedulingClass).  `idle`
        gets disk time only when nothing else wants it: on a busy disk a backup may never finish.
      '';
    };

    ioSchedulingPriority = mkOption {
      type = types.nullOr (types.ints.between 0 7);
      default = null;
      description = "`IOSchedulingPriority=` (0 highest, 7 lowest) within the class; null: derived from `nice`.";
    };

    onFailure = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "notify-failure@%n.service" ];
      description = ''
        Units every btrsync unit starts when it fails (`OnFailure=`): the job units besides
        `btrsync-on-failure@` (which runs the job's `on_failure` hooks), and the verification units,
        which have no hooks of their own.
      '';
    };

    checkConfig = mkOption {
      type = types.bool;
      default = true;
      description = "Run `btrsync config check` on the generated configuration when the system is built.";
    };

    settings = mkOption {
      type = settingsFormat.type;
      default = { };
      example = literalExpression ''{ push.chunk_size = "8M"; targets.b2.part_size = "64M"; }'';
      description = ''
        The btrsync configuration (`/etc/btrsync/config.toml`, TOML; keys as in docs/scheduling.md).
        The module fills it from the options; set keys it has no option for here.
      '';
    };
  };

  config = mkIf cfg.enable {
    services.btrsync.settings = T.compact {
      key_file = if cfg.keyFile == null then null else toString cfg.keyFile;
      state_dir = cfg.stateDir;
      max_parallel_jobs = cfg.maxParallelJobs;
    };

    environment.systemPackages = [ cfg.package ];
    environment.etc."btrsync/config.toml".source = if cfg.checkConfig then checkedConfig else configFile;

    systemd.services = lib.mapAttrs' (n: j: lib.nameValuePair "btrsync-${n}" (jobService n j)) cfg.jobs
      // { "btrsync-on-failure@" = failureService; };
    systemd.timers = lib.mapAttrs' (n: j: lib.nameValuePair "btrsync-${n}" (jobTimer n j)) enabledJobs;
    # the state directory, and the drills' scratch directories (bound into units with a private /var/tmp)
    systemd.tmpfiles.rules = [ "d ${cfg.stateDir} 0700 root root -" ]
      ++ map (d: "d ${d} 0700 root root -") (lib.unique (lib.concatLists (lib.mapAttrsToList (_: job:
        lib.optionals (drills job) (map (t: (verifyOf job job.targets.${t}).scratchDir) (lib.attrNames job.targets))) cfg.jobs)));

    assertions = secretAssertions ++ settingsAssertions
      ++ lib.mapAttrsToList (n: _: {
        assertion = validName n;
        message = "services.btrsync.jobs.\"${n}\": a job name is 1-64 letters, digits, '-' and '_', not starting with '-' (it names systemd units and metric labels).";
      }) cfg.jobs
      ++ [ {
        assertion = cfg.keyFile != null || jobsWithTargets == [ ];
        message = "services.btrsync.keyFile is not set, but job(s) ${lib.concatStringsSep ", " jobsWithTargets} push to targets and need the repository key.";
      } ];
  };
}
