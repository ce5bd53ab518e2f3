# Shared by scripts/serve and scripts/test: installs the Debian packages Kiln's builds need when they
# are missing (as root; otherwise it says what to install).
#
# ensure_packages COMMAND=PACKAGE ...   e.g. ensure_packages bwrap=bubblewrap git=git
ensure_packages() {
  local missing=() pair
  for pair in "$@"; do
    command -v "${pair%%=*}" >/dev/null 2>&1 || missing+=("${pair#*=}")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ]; then
    printf 'kiln: missing packages: %s (install them with apt-get as root)\n' "${missing[*]}" >&2
    return 0
  fi
  printf '\n==> installing %s with apt-get\n' "${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
}
