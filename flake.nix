{
  description = "btrsync: btrfs snapshots and encrypted incremental backups, with a NixOS module";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAll = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      packages = forAll (pkgs: rec {
        btrsync = pkgs.callPackage ./nix/package.nix { };
        default = btrsync;
      });

      overlays.default = final: _prev: { btrsync = final.callPackage ./nix/package.nix { }; };

      # the module builds the package with the host's own nixpkgs (its default is
      # pkgs.callPackage ./nix/package.nix { }): a second nixpkgs would bring a second Python
      nixosModules.default = ./nix/modules/backup;

      checks = forAll (pkgs: {
        package = self.packages.${pkgs.stdenv.hostPlatform.system}.btrsync;  # with its unit tests
        vm = import ./nix/tests/vm.nix { inherit pkgs; module = self.nixosModules.default; };
      });
    };
}
