#!/usr/bin/env bash
# Prints, for every failed test in a `cargo test` log, the first and last lines of what it printed
# (the panic message or anyhow's error at the top, its "Caused by" chain at the bottom), each line cut
# to 300 characters: CI shows only part of a long log, and the reason of a failure is otherwise lost
# among the logs the test attaches.
set -euo pipefail
log=$1
awk '
  function flush() {
    if (name == "") return
    print "=== " name
    if (n <= 16) { for (i = 1; i <= n; i++) print substr(lines[i], 1, 300) }
    else {
      for (i = 1; i <= 8; i++) print substr(lines[i], 1, 300)
      print "    [... " (n - 16) " lines ...]"
      for (i = n - 7; i <= n; i++) print substr(lines[i], 1, 300)
    }
    name = ""; n = 0
  }
  /^---- .* stdout ----$/ { flush(); name = $2; next }
  /^failures:$/ && name != "" { flush(); next }
  name != "" && $0 != "" { lines[++n] = $0 }
  END { flush() }
' "$log"
