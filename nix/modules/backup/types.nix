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
    let m = builtins.match "file://([^/]*)(/[^?#]*).*" url;
        dir = if m == null then null else percentDecode (builtins.elemAt m 1);
        trimmed = if dir == null then null else lib.removeSuffix "/" dir;
    in if dir == null then null else if trimmed == "" then "/" else trimmed;
  # %XX escapes of a URL path, decoded as btrsync (urllib.parse.unquote) decodes them: file:///mnt/repo%201
  # is the directory "/mnt/repo 1" (printable ASCII; anything else is left as written)
  hexDigits = lib.stringToCharacters "0123456789abcdef";
  printable = lib.stringToCharacters " !\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefghijklmnopqrstuvwxyz{|}~";
  byteChars = lib.listToAttrs (map (c: let i = lib.strings.charToInt c; in lib.nameValuePair
    (builtins.elemAt hexDigits (i / 16) + builtins.elemAt hexDigits (lib.mod i 16)) c) printable);
  percentDecode = s:
    let parts = lib.splitString "%" s;
        decodeOne = p: let code = lib.toLower (builtins.substring 0 2 p); in
          if byteChars ? ${code} then byteChars.${code} + builtins.substring 2 (-1) p else "%" + p;
    in builtins.head parts + lib.concatStrings (map decodeOne (builtins.tail parts));
  isS3 = url: lib.hasPrefix "s3://" url;
  isSsh = url: lib.hasPrefix "ssh://" url;

  # the hardening of every unit, as btrsync/jobs/systemd.py HARDENING; at mkDefault, so that a
  # host's own serviceConfig (Nice = 5, ProtectHome = ...) overrides it instead of conflicting.
  # LimitCORE=0 stays at normal priority: a core file of a unit holding the key would hold it in clear.
  hardening = cfg: lib.mapAttrs (_: lib.mkDefault) ({
    ProtectSystem = "strict";
    PrivateTmp = true;
    NoNewPrivileges = true;
    ProtectKernelTunables = true;
    ProtectKernelModules = true;
    ProtectKernelLogs = true;
    ProtectControlGroups = true;
    ProtectClock = true;
    ProtectHostname = true;
    ProtectProc = "invisible";
    RestrictNamespaces = true;
    RestrictAddressFamilies = [ "AF_UNIX" "AF_INET" "AF_INET6" ];
    RestrictSUIDSGID = true;
    RestrictRealtime = true;
    LockPersonality = true;
    SystemCallArchitectures = "native";
    SystemCallFilter = [ "@system-service" "@mount" ];
    SystemCallErrorNumber = "EPERM";
    UMask = "0077";
    Nice = cfg.nice;
    CPUSchedulingPolicy = "batch";
    IOSchedulingClass = cfg.ioSchedulingClass;
  } // lib.optionalAttrs (cfg.ioSchedulingPriority != null) { IOSchedulingPriority = cfg.ioSchedulingPriority; })
  // { LimitCORE = "0"; };

  # a drill scratch directory under a unit's private /tmp or /var/tmp (PrivateTmp=) is bound in
  # from the host's, so that the drill lock and the leftover cleanup are shared between units
  privateTmp = d: lib.any (p: d == p || lib.hasPrefix "${p}/" d) [ "/tmp" "/var/tmp" ];

  # LoadCredential= entries for a target's secret files (btrsync reads them from
  # $CREDENTIALS_DIRECTORY/target-<name> and ssh-<name>, in every command); none for a bare URL.
  targetCredentials = cfg: t:
    let s = cfg.targets.${t} or null; in
    lib.optional (s != null && s.credentialsFile != null) "target-${t}:${toString s.credentialsFile}"
    ++ lib.optional (s != null && s.identityFile != null) "ssh-${t}:${toString s.identityFile}";

  baseCaps = [ "CAP_SYS_ADMIN" "CAP_DAC_READ_SEARCH" "CAP_DAC_OVERRIDE" "CAP_FOWNER" ];
  receiveCaps = [ "CAP_CHOWN" "CAP_FSETID" "CAP_MKNOD" "CAP_SETFCAP" "CAP_LINUX_IMMUTABLE" "CAP_SYS_CHROOT" ];
}
