#!/usr/bin/env bash
# Print the interpreter `make setup` builds the venv from (run it to see the timings on stderr):
#   bash scripts/pick_python.sh        ->  /usr/bin/python3.11
# Candidates: python3 and the other builds of the same X.Y version on this machine (/usr/bin/python3.X,
# python3.X on PATH); the same version, so the wheels (torch's CPU wheel included) stay the same. Of those that
# can make a venv, the fastest on a short pure-Python workload wins (a generator of slotted rows, dict and
# string methods, calls, hashing: what the data stage does per row), each timed three times alternately and
# judged by its best time. Why: builds differ a lot. On the project VM pyenv's default 3.11 build (no PGO/LTO,
# libpython shared) ran `tuneloop data prepare` with ~25% more CPU than Debian's /usr/bin/python3.11 (PGO+LTO,
# static) and this workload with ~45% more. `make PY=...` skips the choice.
set -euo pipefail
default="$(command -v python3)"
version="$("$default" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
declare -A seen=()
candidates=()
for c in "$default" "/usr/bin/python$version" "$(command -v "python$version" || true)"; do
  [ -n "$c" ] && [ -x "$c" ] || continue
  # "X.Y realpath" from the interpreter itself (a pyenv shim is a script: its own path names no build)
  info="$("$c" -c 'import os, sys, venv, ensurepip
print("%d.%d" % sys.version_info[:2], os.path.realpath(sys.executable))' 2>/dev/null || true)"
  [ "${info%% *}" = "$version" ] || continue
  real="${info#* }"
  [ -z "${seen[$real]:-}" ] || continue
  seen[$real]=1
  candidates+=("$real")
done
if [ "${#candidates[@]}" -le 1 ]; then
  echo "$default"
  exit 0
fi
workload='
import time
class Row:
    __slots__ = ("line", "fields")
    def __init__(self, line, fields):
        self.line, self.fields = line, fields
def rows(n):
    for i in range(n):
        yield Row(i, {"role": "user", "content": "Hello there, number %d!" % i})
def clean(m):
    c = m.get("content")
    if type(c) is not str or not c or c.isspace():
        return None
    return " ".join(c.split()) if "  " in c else c.strip()
def run():
    seen = {}
    for r in rows(150000):
        seen.setdefault(hash(clean(r.fields).lower().encode()), r.line)
c = time.process_time(); run(); print(time.process_time() - c)'
declare -A best=()
for _ in 1 2 3; do
  for c in "${candidates[@]}"; do
    t="$("$c" -c "$workload")"
    best[$c]="$(python3 -c "print(min(float('$t'), float('${best[$c]:-inf}')))")"
  done
done
pick=""
for c in "${candidates[@]}"; do
  echo "pick_python: $c ($("$c" -c 'import platform; print(platform.python_version())')) ${best[$c]} s" >&2
  if [ -z "$pick" ] || python3 -c "import sys; sys.exit(0 if ${best[$c]} < ${best[$pick]} else 1)"; then
    pick="$c"
  fi
done
echo "pick_python: $pick" >&2
echo "$pick"
