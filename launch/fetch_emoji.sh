#!/usr/bin/env bash
# Fetch the real emoji image-text data (see README, "Datasets"): the npm tarballs of the Google and Twitter
# emoji images (64 px) and of emojibase's CLDR labels, unpacked into DIR (default: ./data/emoji) as
#   DIR/emoji-datasource-google/{emoji.json,img/google/64/*.png}
#   DIR/emoji-datasource-twitter/{emoji.json,img/twitter/64/*.png}
#   DIR/emojibase-data/en/data.json
# Needs npm (only to download: `npm pack` checks each tarball against the registry's integrity hash);
# nothing of Node.js is used afterwards. Then: fastslow data build emoji/benchmark --manual-dir DIR
# Licences: Noto images Apache-2.0, Twemoji CC-BY-4.0, CLDR data Unicode licence, emojibase MIT.
set -euo pipefail
DIR="${1:-data/emoji}"
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
PACKAGES=(emoji-datasource-google@16.0.0 emoji-datasource-twitter@16.0.0 emojibase-data@17.0.0)
command -v npm >/dev/null || { echo "fetch_emoji.sh: npm is needed to download the tarballs" >&2; exit 1; }
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "${PACKAGES[@]}" >/dev/null)
for vendor in google twitter; do
  out="$DIR/emoji-datasource-$vendor"
  rm -rf "$out" && mkdir -p "$out"
  tar xzf "$tmp"/emoji-datasource-$vendor-16.0.0.tgz -C "$out" --strip-components=1 \
      package/emoji.json "package/img/$vendor/64" package/LICENSE
  echo "$out: $(ls "$out/img/$vendor/64" | wc -l) images"
done
out="$DIR/emojibase-data"
rm -rf "$out" && mkdir -p "$out"
tar xzf "$tmp"/emojibase-data-17.0.0.tgz -C "$out" --strip-components=1 package/en/data.json package/LICENSE
echo "$out: en/data.json"
