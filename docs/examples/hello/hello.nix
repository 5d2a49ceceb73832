# A derivation for another architecture, with no nixpkgs and no network: its builder is
# Debian's static busybox for that architecture, which ./get-busybox puts in ./<arch>.
#   nix-build hello.nix                                  aarch64-linux (./arm64)
#   nix-build hello.nix --argstr system riscv64-linux    riscv64-linux (./riscv64)
{ system ? "aarch64-linux" }:
let
  folder = { aarch64-linux = ./arm64; riscv64-linux = ./riscv64; }.${system};
in
derivation {
  name = "hello-${system}";
  inherit system;
  # busybox picks its applet from argv[0]: the file must be called busybox.
  builder = "${folder}/busybox";
  args = [ "sh" "-c" "uname -m > $out" ];
}
