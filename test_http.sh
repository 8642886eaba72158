#!/bin/sh
# Smoke test of every endpoint of a running device (the host simulation or a real ESP32) with curl:
#
#   ./test_http.sh HOST[:PORT] [OSID]
#
# PORT defaults to 8003, OSID to the one the device reports in its health. Prints one line per check
# and ends with "N passed, M failed"; the exit status is non-zero when any check failed. The one
# boolean actuator it switches is put back to its original value. Needs only curl and a POSIX sh.
set -u

if [ $# -lt 1 ] || [ $# -gt 2 ] || [ "$1" = -h ] || [ "$1" = --help ]; then
    sed -n '2,7s/^# \{0,1\}//p' "$0" >&2
    exit 2
fi
case "$1" in
    *:*) target=$1 ;;
    *) target=$1:8003 ;;
esac
base="http://$target"
osid=${2:-}
passed=0
failed=0
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT

ok() {
    passed=$((passed + 1))
    echo "ok   $1"
}

fail() {
    failed=$((failed + 1))
    echo "FAIL $1: $2"
}

# req METHOD PATH: sets $code (000 when nothing answered) and $body.
req() {
    code=$(curl -sS --max-time 10 -o "$tmp" -w '%{http_code}' -X "$1" "$base$2" 2>/dev/null) || code=000
    body=$(cat "$tmp")
}

# field NAME [TEXT]: the string value of "NAME":"..." in TEXT (default: $body).
field() {
    printf '%s' "${2-$body}" | sed -n "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p"
}

# check NAME METHOD PATH STATUS [TEXT...]: the answer has STATUS and contains every TEXT.
check() {
    name=$1
    req "$2" "$3"
    want=$4
    shift 4
    if [ "$code" != "$want" ]; then
        fail "$name" "HTTP $code, expected $want: $body"
        return 1
    fi
    for text in "$@"; do
        case "$body" in
            *"$text"*) ;;
            *)
                fail "$name" "no $text in $body"
                return 1
                ;;
        esac
    done
    ok "$name"
}

# --- health, and the osid the rest uses ---
if check "health" GET /Datastreams/health 200 '"status":"healthy"' '"service":"datastream"'; then
    [ -n "$osid" ] || osid=$(field osid)
elif [ "$code" = 000 ]; then
    echo "     (nothing answers on $base: is the device up, and is this its address?)"
fi
[ -n "$osid" ] || osid=ObjetoESP32
ds="/Datastreams"

# --- SendState: the streams to go through ---
streams=""
if check "SendState" GET "$ds/SendState?osid=$osid" 200 "\"osid\":\"$osid\"" '"datastreams":['; then
    # one line per stream: id format type value
    streams=$(printf '%s' "$body" | tr '{' '\n' | grep '"datastream_id"' | while IFS= read -r item; do
        printf '%s %s %s %s\n' "$(field datastream_id "$item")" "$(field datastream_format "$item")" \
            "$(field datastream_type "$item")" "$(field value "$item")"
    done)
    count=$(printf '%s' "$body" | sed -n 's/.*"count":\([0-9]*\).*/\1/p')
    listed=$(printf '%s\n' "$streams" | grep -c .)
    if [ "$count" = "$listed" ] && [ "$listed" -gt 0 ]; then
        ok "SendState count ($count streams)"
    else
        fail "SendState count" "count $count, $listed streams listed"
    fi
fi

# --- SendData for each stream ---
actuator=""
sensor=""
while read -r id format type value; do
    [ -n "$id" ] || continue
    check "SendData $id" GET "$ds/SendData?osid=$osid&variableEstado=$id&tipove=1" 200 \
        "\"datastream_id\":\"$id\"" "\"datastream_format\":\"$format\"" '"value":"'
    if [ -z "$actuator" ] && [ "$format" = boolean ] && [ "$type" = actuator ]; then
        actuator=$id
        original=$value
    fi
    [ -n "$sensor" ] || [ "$type" != sensor ] || sensor=$id
done <<EOF
$streams
EOF

# --- SetDatastream on/off on the first boolean actuator, then back to its original value ---
set_to() {  # set_to COMANDO EXPECTED_VALUE
    if check "SetDatastream $actuator $1" POST "$ds/SetDatastream?osid=$osid&idDataStream=$actuator&comando=$1" 200 \
        '"status":"success"' '"code":"1001"'; then
        req GET "$ds/SendData?osid=$osid&variableEstado=$actuator&tipove=1"
        now=$(field value)
        if [ "$now" = "$2" ]; then
            ok "SendData $actuator reads $2 after $1"
        else
            fail "SendData $actuator after $1" "value '$now', expected '$2'"
        fi
    fi
}
if [ -n "$actuator" ]; then
    set_to on true
    set_to off false
    if [ "$original" = true ]; then back=on; else back=off; fi
    check "SetDatastream $actuator back to $back" POST \
        "$ds/SetDatastream?osid=$osid&idDataStream=$actuator&comando=$back" 200 '"code":"1001"'
else
    echo "skip SetDatastream: the device has no boolean actuator"
fi

# --- the documented errors ---
missing='"status":"error","message":"Par'
check "SendState without osid: 400" GET "$ds/SendState" 400 "$missing"
check "SendState wrong osid: 1025" GET "$ds/SendState?osid=$osid-wrong" 200 '"code":"1025"'
check "SendData without variableEstado: 400" GET "$ds/SendData?osid=$osid&tipove=1" 400 "$missing"
check "SendData wrong osid: 1025" GET "$ds/SendData?osid=$osid-wrong&variableEstado=x&tipove=1" 200 '"code":"1025"'
check "SendData tipove=2: 1099" GET "$ds/SendData?osid=$osid&variableEstado=x&tipove=2" 200 '"code":"1099"'
check "SendData unknown stream: 1026" GET "$ds/SendData?osid=$osid&variableEstado=no_such_stream&tipove=1" 200 \
    '"code":"1026"'
check "SetDatastream without comando: 400" POST "$ds/SetDatastream?osid=$osid&idDataStream=x" 400 "$missing"
check "SetDatastream wrong osid: 1025" POST "$ds/SetDatastream?osid=$osid-wrong&idDataStream=x&comando=on" 200 \
    '"code":"1025"'
check "SetDatastream unknown stream: 1026" POST \
    "$ds/SetDatastream?osid=$osid&idDataStream=no_such_stream&comando=on" 200 '"code":"1026"'
if [ -n "$sensor" ]; then
    check "SetDatastream on sensor $sensor: 1027" POST \
        "$ds/SetDatastream?osid=$osid&idDataStream=$sensor&comando=on" 200 '"code":"1027"'
fi
check "SetDatastream by GET: 405" GET "$ds/SetDatastream?osid=$osid&idDataStream=x&comando=on" 405 "Method not allowed"
check "SendState by POST: 405" POST "$ds/SendState?osid=$osid" 405 "Method not allowed"
check "unknown path: 404" GET "$ds/NoSuchThing" 404 "Not found"

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
