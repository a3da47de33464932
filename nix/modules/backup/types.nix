# Shared option types and helpers of the btrsync module (a plain function, not a module).
{ lib }:
let
  inherit (lib) mkOption types;
in
rec {
  # A secret file: a string naming a runtime path.  Path literals are accepted by the type only so
  # that an assertion can refuse them with a clear message (default.nix).
  secretPath = description: mkOption {
    type = types.nullOr (types.either types.str types.path);
    default = null;
    example = "/var/lib/opnix/secrets/btrsyncKey";
    inherit description;
  };

  # A retention policy (GFS): keep_* counts, keep_within; null = not set.
  policyOptions = {
    keepLast = mkOption { type = types.nullOr (types.either types.ints.unsigned (types.enum [ "unlimited" ])); default = null; description = "Keep the newest N."; };
    keepHourly = mkOption { type = types.nullOr (types.either types.ints.unsigned (types.enum [ "unlimited" ])); default = null; description = "Keep the newest of each of the last N hours."; };
    keepDaily = mkOption { type = types.nullOr (types.either types.ints.unsigned (types.enum [ "unlimited" ])); default = null; description = "Keep the newest of each of the last N days."; };
    keepWeekly = mkOption { type = types.nullOr (types.either types.ints.unsigned (types.enum [ "unlimited" ])); default = null; description = "Keep the newest of each of the last N weeks."; };
    keepMonthly = mkOption { type = types.nullOr (types.either types.ints.unsigned (types.enum [ "unlimited" ])); default = null; description = "Keep the newest of each of the last N months."; };
    keepYearly = mkOption { type = types.nullOr (types.either types.ints.unsigned (types.enum [ "unlimited" ])); default = null; description = "Keep the newest of each of the last N years."; };
    keepWithin = mkOption { type = types.nullOr types.str; default = null; example = "7d"; description = "Keep everything newer than this duration."; };
  };
  policy = types.submodule { options = policyOptions; };

  # { keepDaily = 7; ... } -> { keep_daily = 7; ... } without unset rules
  policySettings = p: compact {
    keep_last = p.keepLast; keep_hourly = p.keepHourly; keep_daily = p.keepDaily;
    keep_weekly = p.keepWeekly; keep_monthly = p.keepMonthly; keep_yearly = p.keepYearly;
    keep_within = p.keepWithin;
  };
  policyEmpty = p: policySettings p == { };

  compact = lib.filterAttrs (_: v: v != null);

  # systemd ExecStart= argument: specifiers and variables escaped, quoted when needed
  # (the same rule as btrsync/jobs/systemd.py exec_arg)
  execArg = arg:
    let e = lib.replaceStrings [ "%" "$" ] [ "%%" "$$" ] arg;
    in if e != "" && builtins.match ''.*[[:space:]"'\\;].*'' e == null then e
       else ''"'' + lib.replaceStrings [ "\\" ''"'' ] [ "\\\\" ''\"'' ] e + ''"'';
  # a path in a space-separated unit setting: % escaped, quoted when it has blanks
  quoted = prefix: p:
    let t = prefix + lib.replaceStrings [ "%" ] [ "%%" ] p;
    in if builtins.match ".*[[:space:]].*" t != null then ''"${t}"'' else t;

  # the directory of a file:// target URL, or null
  fileTargetDir = url:
    let m = builtins.match "file://([^/]*)(/.*)" url;
    in if m == null then null else builtins.elemAt m 1;
  isS3 = url: lib.hasPrefix "s3://" url;
  isSsh = url: lib.hasPrefix "ssh://" url;

  # the hardening of every unit, as btrsync/jobs/systemd.py HARDENING
  hardening = {
    ProtectSystem = "strict";
    PrivateTmp = true;
    NoNewPrivileges = true;
    ProtectKernelTunables = true;
    ProtectControlGroups = true;
    ProtectHostname = true;
    RestrictSUIDSGID = true;
    RestrictRealtime = true;
    LockPersonality = true;
    SystemCallArchitectures = "native";
    UMask = "0077";
    Nice = 10;
    CPUSchedulingPolicy = "batch";
    IOSchedulingClass = "idle";
  };
  # LoadCredential= entries for a target's secret files (btrsync reads them from
  # $CREDENTIALS_DIRECTORY/target-<name> and ssh-<name>, in every command); none for a bare URL.
  targetCredentials = cfg: t:
    let s = cfg.targets.${t} or null; in
    lib.optional (s != null && s.credentialsFile != null) "target-${t}:${toString s.credentialsFile}"
    ++ lib.optional (s != null && s.identityFile != null) "ssh-${t}:${toString s.identityFile}";

  baseCaps = [ "CAP_SYS_ADMIN" "CAP_DAC_READ_SEARCH" "CAP_DAC_OVERRIDE" "CAP_FOWNER" ];
  receiveCaps = [ "CAP_CHOWN" "CAP_FSETID" "CAP_MKNOD" "CAP_SETFCAP" "CAP_LINUX_IMMUTABLE" "CAP_SYS_CHROOT" ];
}
