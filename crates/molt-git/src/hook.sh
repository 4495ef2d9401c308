#!/bin/bash
# pre-receive hook installed by molt (molt rewrites it): a push deploys. molt reads the pushed
# refs from the push's directory and writes its progress back; this prints it (git relays it
# to the pusher as `remote:` lines) and exits with molt's verdict, so a failed deployment
# refuses the push and git drops what it received.
set -u
dir="${MOLT_PUSH_DIR:-}"
if [ -z "$dir" ] || [ ! -p "$dir/progress" ]; then
    echo "molt: push through molt's API (http://HOST:PORT/git/<app>.git), not to this folder" >&2
    exit 1
fi
# Read and write, so opening never waits; the end is a line, not the end of the pipe.
exec 3<>"$dir/progress"
{
    printf 'GIT_OBJECT_DIRECTORY=%s\n' "${GIT_OBJECT_DIRECTORY:-}"
    printf 'GIT_ALTERNATE_OBJECT_DIRECTORIES=%s\n' "${GIT_ALTERNATE_OBJECT_DIRECTORIES:-}"
    cat
} >"$dir/request.tmp" && mv "$dir/request.tmp" "$dir/request" || exit 1
lines=0
while [ "$lines" -lt 1000000 ]; do
    lines=$((lines + 1))
    if ! IFS= read -r -t 7200 line <&3; then
        echo "molt: no word from molt for two hours; the push is refused" >&2
        exit 1
    fi
    case "$line" in
        "molt-exit "*) exit "${line#molt-exit }" ;;
    esac
    printf '%s\n' "$line"
done
exit 1
