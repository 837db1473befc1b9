#!/usr/bin/env bash
# Builds the development/test guest: Debian's cloud kernel and a busybox
# initramfs whose /init loads the virtio modules, prints the readiness
# marker on the serial console, optionally serves HTTP, and waits.
#
#   nix/guest/build-image.sh OUT_DIR     -> OUT_DIR/vmlinuz, OUT_DIR/initrd.gz
#
# Needs: apt-get (to download the kernel .deb), dpkg, busybox-static, cpio, gzip.
# The result is laid out for Blixard's built-in qemu runner (-M microvm).
set -euo pipefail

out=${1:?usage: build-image.sh OUT_DIR}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)
# Up to date when the image exists and was built from this very /init.
if [ -s "$out/vmlinuz" ] && [ -s "$out/initrd.gz" ] && cmp -s "$here/init" "$out/init"; then
  echo "guest image is up to date in $out"
  exit 0
fi

busybox=$(command -v busybox || true)
[ -n "$busybox" ] || { echo "busybox is missing: apt-get install busybox-static" >&2; exit 1; }
if ! file -L "$busybox" 2>/dev/null | grep -q "statically linked" && ! ldd "$busybox" 2>&1 | grep -q "not a dynamic"; then
  echo "$busybox is not statically linked: apt-get install busybox-static" >&2
  exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

package=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image/ {print $2; exit}')
[ -n "$package" ] || { echo "no cloud kernel package found (run apt-get update)" >&2; exit 1; }
(cd "$work" && apt-get download -q "$package" >/dev/null 2>&1) \
  || { echo "apt-get download $package failed" >&2; exit 1; }
dpkg -x "$work"/linux-image-*.deb "$work/kernel"
version=$(ls "$work/kernel/lib/modules")
cp "$work"/kernel/boot/vmlinuz-* "$out/vmlinuz.tmp"

root="$work/root"
mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,www,lib/modules,etc}
cp "$busybox" "$root/bin/busybox"
for applet in sh mount insmod ip httpd sleep cat echo reboot poweroff mkdir ls ps; do
  ln -s busybox "$root/bin/$applet"
done
modules="$work/kernel/lib/modules/$version/kernel"
for module in drivers/virtio/virtio.ko drivers/virtio/virtio_ring.ko drivers/virtio/virtio_mmio.ko \
              net/core/failover.ko drivers/net/net_failover.ko drivers/net/virtio_net.ko \
              drivers/block/virtio_blk.ko; do
  cp "$modules/$module" "$root/lib/modules/"
done
cp "$here/init" "$root/init"
chmod +x "$root/init"
echo "blixard guest ($version)" > "$root/www/index.html"

(cd "$root" && find . | cpio -o -H newc --quiet | gzip -9) > "$out/initrd.gz.tmp"
mv "$out/vmlinuz.tmp" "$out/vmlinuz"
mv "$out/initrd.gz.tmp" "$out/initrd.gz"
cp "$here/init" "$out/init"
echo "guest image: $out/vmlinuz $out/initrd.gz (kernel $version)"
