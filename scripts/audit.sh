#!/usr/bin/env bash
# Audit the pinned dependency set (constraints.txt) for known vulnerabilities with pip-audit
# (PyPI's advisory data, from the OSV database). Exceptions live in .audit-exceptions, one
# vulnerability ID per line with the reason it is accepted; anything else found fails the audit.
#
#   scripts/audit.sh            # exit 0: nothing unexcused; 1: vulnerabilities; 3: no service
#
# --strict makes a package that could not be looked up an error, so an unreachable
# vulnerability service fails loudly instead of passing with "No known vulnerabilities found".
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${VENV:-.venv}/bin/python"
EXCEPTIONS=.audit-exceptions

"$PY" -m pip install --quiet --disable-pip-version-check pip-audit
ignores=()
while read -r id _; do
  [[ -z "$id" || "$id" == \#* ]] && continue
  ignores+=(--ignore-vuln "$id")
done < "$EXCEPTIONS"

report=$(mktemp)
trap 'rm -f "$report"' EXIT
set +e
"$PY" -m pip_audit --requirement constraints.txt --no-deps --disable-pip --strict \
  --progress-spinner off "${ignores[@]}" >"$report" 2>&1
status=$?
set -e
cat "$report"
if grep -qE "could not be audited|Connection|NameResolution|Max retries" "$report"; then
  echo "audit: the vulnerability service could not be reached or did not know the pins;" \
       "nothing was audited" >&2
  exit 3
fi
exit "$status"
