# shellcheck shell=bash
# Shared helpers for the scripts in scripts/. Source it, do not run it:
#   # shellcheck source-path=SCRIPTDIR source=lib/common.sh
#   source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
# Everything here talks to 127.0.0.1 only.

# The script name used as a prefix for messages.
BLAST_PROG=${BLAST_PROG:-$(basename "$0")}

log() { printf '%s: %s\n' "$BLAST_PROG" "$*" >&2; }
die() { printf '%s: error: %s\n' "$BLAST_PROG" "$*" >&2; exit 1; }

# is_uint VALUE -> success if VALUE is a non-negative decimal integer.
is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

# need_pos_int VALUE NAME -> dies unless VALUE is a positive integer.
need_pos_int() {
  if ! is_uint "$1" || (( 10#$1 == 0 )); then
    die "$2 must be a positive integer, got '$1'"
  fi
}

# check_port VALUE NAME -> dies unless VALUE is a TCP port number.
check_port() {
  if ! is_uint "$1" || (( 10#$1 < 1 || 10#$1 > 65535 )); then
    die "$2 must be a port number (1-65535), got '$1'"
  fi
}

# abs_path PATH -> prints PATH made absolute (the path need not exist).
abs_path() {
  case $1 in
    /*) printf '%s\n' "$1" ;;
    *) printf '%s/%s\n' "$PWD" "${1#./}" ;;
  esac
}

# port_in_use PORT -> success if something accepts TCP connections on 127.0.0.1:PORT.
port_in_use() {
  # shellcheck disable=SC2016 # $1 is expanded by the inner bash
  timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" 2>/dev/null
}

# smtp_banner PORT -> prints the first line the server at 127.0.0.1:PORT sends
# (an SMTP greeting), then says QUIT. Fails if nothing answers within 3 s.
smtp_banner() {
  # shellcheck disable=SC2016 # $1 and $line are expanded by the inner bash
  timeout 3 bash -c '
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    IFS= read -r line <&3 || exit 1
    printf "QUIT\r\n" >&3 2>/dev/null || true
    printf "%s\n" "${line%$'"'"'\r'"'"'}"
  ' _ "$1" 2>/dev/null
}

# wait_for_220 PORT TIMEOUT_SECONDS [PID] -> waits until 127.0.0.1:PORT greets
# with "220"; fails after TIMEOUT_SECONDS, or at once if PID (when given) dies.
wait_for_220() {
  local port=$1 timeout_s=$2 pid=${3:-} banner deadline
  deadline=$(( $(date +%s) + timeout_s ))
  while :; do
    if banner=$(smtp_banner "$port") && [[ $banner == 220* ]]; then
      return 0
    fi
    if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
      return 1
    fi
    (( $(date +%s) < deadline )) || return 1
    sleep 0.1
  done
}

# free_port -> prints a TCP port on 127.0.0.1 that nothing listens on right now.
free_port() {
  if command -v python3 >/dev/null 2>&1; then
    python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
    return
  fi
  local port i
  for (( i = 0; i < 200; i++ )); do
    port=$(( 20000 + RANDOM % 40000 ))
    port_in_use "$port" || { printf '%s\n' "$port"; return 0; }
  done
  die "could not find a free TCP port on 127.0.0.1"
}

# find_postfix_tool NAME -> prints the path of a Postfix program (smtp-sink,
# smtp-source, postfix, postconf, ...) or fails.
find_postfix_tool() {
  local name=$1 dir path
  if path=$(command -v "$name" 2>/dev/null) && [[ -x $path ]]; then
    printf '%s\n' "$path"; return 0
  fi
  for dir in /usr/sbin /usr/bin /usr/local/sbin /usr/local/bin /usr/lib/postfix/sbin /usr/libexec/postfix /usr/lib/postfix; do
    if [[ -x $dir/$name ]]; then
      printf '%s\n' "$dir/$name"; return 0
    fi
  done
  return 1
}

# need_postfix_tool NAME -> like find_postfix_tool but dies with a hint.
need_postfix_tool() {
  find_postfix_tool "$1" || die "'$1' not found (it ships in Debian's 'postfix' package); run scripts/install-deps"
}

# proc_is PID NAME -> success if PID is alive (not a zombie waiting to be
# reaped, which can take a while when PID 1 is not a real init) and its
# command name is NAME.
proc_is() {
  local stat comm state
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  comm=${stat#*(}; comm=${comm%)*}
  state=${stat##*) }; state=${state%% *}
  [[ $comm == "$2" && $state != Z && $state != X ]]
}
