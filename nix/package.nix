# btrsync for nixpkgs: `pkgs.callPackage ./nix/package.nix { }`.  The C send-stream parser is
# built (setup.py) and imported as a check; btrfs-progs, zstd, openssh, rsync and util-linux
# (losetup, mount, umount, mountpoint: restore drills) are on the wrapped program's PATH, which is
# all a NixOS unit adds to its own (coreutils, findutils, grep, sed, systemd).  The checks run the tests that need neither root, btrfs, loop devices
# nor network (the rest run in the project's CI and in nix/tests/vm.nix).
{ lib
, python3Packages
, installShellFiles
, btrfs-progs
, zstd
, openssh
, rsync
, util-linux
}:
python3Packages.buildPythonApplication {
  pname = "btrsync";
  version = "0.1.0";
  pyproject = true;

  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../btrsync ../native ../tests ../monitoring ../docs ../man ../completions ../setup.py ../pyproject.toml ../README.md
    ];
  };

  build-system = with python3Packages; [ setuptools wheel ];

  # pyproject.toml [project] dependencies (tests/nix keeps the two lists equal)
  dependencies = with python3Packages; [
    boto3
    botocore
    zstandard
    cryptography
    xxhash
    click
    psutil
    pydantic
    prometheus-client
    jeepney
  ];

  nativeBuildInputs = [ installShellFiles ];

  # man pages and completion scripts are committed (scripts/cli-files writes them from the click
  # CLI; a test keeps them current), so nothing runs btrsync at build time (cross builds too)
  postInstall = ''
    installManPage man/*.1
    installShellCompletion --cmd btrsync \
      --bash completions/btrsync.bash --zsh completions/_btrsync --fish completions/btrsync.fish
  '';

  makeWrapperArgs = [ "--prefix" "PATH" ":" (lib.makeBinPath [ btrfs-progs zstd openssh rsync util-linux ]) ];

  nativeCheckInputs = with python3Packages; [ pytestCheckHook hypothesis pytest-timeout ];
  enabledTestPaths = [ "tests/unit" ];
  pytestFlags = [ "-p" "no:cacheprovider" ];
  # the checks import the installed package (with its compiled C extension), not the source tree
  preCheck = ''
    rm -r btrsync
  '';
  pythonImportsCheck = [ "btrsync" "btrsync.sendstream._native" ];

  # meta.homepage: absent on purpose, not a placeholder: the project has no public address yet
  # (no repository remote, none in README.md or pyproject.toml); add it with the first release.
  # meta.maintainers: empty here; a nixpkgs package lists its maintainers' handles from
  # maintainers/maintainer-list.nix (lib.maintainers.<handle>), added in the same pull request.
  meta = {
    description = "btrfs send/receive incremental backups: snapshots, encrypted chunked pushes to S3/B2, ssh and disks, chain-safe retention, verified restore";
    longDescription = ''
      btrsync takes read-only btrfs snapshots and sends them, encrypted and chunked, to S3-compatible
      storage (Backblaze B2, AWS, SeaweedFS), to ssh servers and to directories; keeps them with
      chain-safe GFS retention, verifies and restore-drills them, and runs as systemd jobs with
      metrics and alerts.  The NixOS module is services.btrsync.
    '';
    license = lib.licenses.asl20;
    maintainers = [ ];
    platforms = lib.platforms.linux;
    mainProgram = "btrsync";
  };
}
