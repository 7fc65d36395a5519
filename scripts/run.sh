#!/usr/bin/env bash
# Starts a release host on $LISTEN with data in ./data, deploys the example modules (once),
# prints how to talk to it, and stays in the foreground until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
LISTEN=${LISTEN:-127.0.0.1:7470}
URL="http://$LISTEN"
./target/release/sluice serve --listen "$LISTEN" --data-dir ./data &
HOST_PID=$!
trap 'kill -TERM $HOST_PID 2>/dev/null; wait $HOST_PID' INT TERM
for _ in $(seq 1 100); do
  curl -sf "$URL/health" >/dev/null && break
  sleep 0.1
done
# wordcount-py and wordcount-js: the same module written with the Python and JavaScript SDKs.
for m in wordcount kv bank social analytics wordcount-py wordcount-js; do
  code=$(curl -s -o /tmp/sluice-deploy.json -w '%{http_code}' -X PUT \
    --data-binary "@target/wasm32-wasip2/release/${m//-/_}.wasm" "$URL/v1/modules/$m")
  case "$code" in
    201) echo "deployed $m" ;;
    200) echo "$m deployed before: now at version $(sed -n 's/.*"version": *\([0-9]*\).*/\1/p' /tmp/sluice-deploy.json | head -1)" ;;
    409) if grep -q module-failed /tmp/sluice-deploy.json; then
           echo "module $m in ./data cannot be loaded: $(cat /tmp/sluice-deploy.json)"
           echo "(./data was written by an older Sluice, before on-disk format 2, or is damaged: see"
           echo " \`./target/release/sluice check ./data\`; move it away, e.g. \`mv data data.old\`, and run again)"
         else
           echo "deploying $m failed ($code): $(cat /tmp/sluice-deploy.json)"
         fi
         kill $HOST_PID; exit 1 ;;
    *) echo "deploying $m failed ($code): $(cat /tmp/sluice-deploy.json)"; kill $HOST_PID; exit 1 ;;
  esac
done
cat <<MSG

Sluice is running on $URL (data in ./data). Try:

  curl -s -X POST $URL/v1/modules/wordcount/depots/words/append -d '{"word": "apple"}'
  curl -s -X POST $URL/v1/modules/wordcount/pstates/counts/select -d '{"path": [{"key": "apple"}]}'
  curl -s $URL/v1/modules/wordcount
  curl -s $URL/v1/modules/wordcount/depots/words
  curl -s -X POST $URL/v1/modules/kv/depots/puts/append -d '{"key": "alice", "field": 7, "value": "hi"}'
  curl -s -X POST $URL/v1/modules/kv/pstates/kv/select -d '{"path": [{"key": "alice"}, "count"]}'
  curl -s -X POST $URL/v1/modules/wordcount/depots/sentences/append -d '{"text": "the cat and the hat"}'
  curl -s -X POST $URL/v1/modules/bank/depots/deposits/append -d '{"account": "alice", "amount": 100}'
  curl -s -X POST $URL/v1/modules/bank/depots/transfers/append -d '{"id": "t1", "from": "alice", "to": "bob", "amount": 30}'
  curl -s -X POST $URL/v1/modules/bank/pstates/accounts/select -d '{"path": [{"key": "alice"}, {"key": "balance"}]}'
  curl -s -X POST $URL/v1/modules/wordcount/queries/top-words -d '{"n": 3}'
  curl -s -X POST $URL/v1/modules/wordcount-py/depots/sentences/append -d '{"text": "the cat and the hat"}'
  curl -s -X POST $URL/v1/modules/wordcount-js/queries/top-words -d '{"n": 3}'
  curl -s -X POST $URL/v1/modules/bank/queries/total-balance -d '{}'
  curl -s -X POST $URL/v1/modules/social/depots/follows/append -d '{"follower": "ann", "followee": "bob"}'
  curl -s -X POST $URL/v1/modules/social/depots/posts/append -d '{"author": "bob", "id": "p1", "text": "hi", "time": 1}'
  curl -s -X POST $URL/v1/modules/social/queries/timeline -d '{"account": "ann"}'
  curl -s -X POST $URL/v1/modules/analytics/depots/views/append -d '{"page": "home", "at": 1700000000000}'
  curl -s -X POST $URL/v1/modules/analytics/pstates/daily/select -d '{"path": [{"key": 1699920000000}]}'
  curl -s $URL/metrics | grep sluice_appends_total

Live (Server-Sent Events; in another terminal, then append as above):

  curl -N -G $URL/v1/modules/wordcount/pstates/counts/subscribe --data-urlencode 'path=[{"key":"apple"}]'
  curl -N -G $URL/v1/modules/social/pstates/home-timelines/subscribe --data-urlencode 'path=[{"key":"ann"},{"sorted-range":{"reverse":true,"limit":20}},"map-vals"]'

The same binary is a client (--server URL or SLUICE_SERVER; default http://127.0.0.1:7470):

  export SLUICE_SERVER=$URL
  ./target/release/sluice modules
  ./target/release/sluice describe wordcount
  ./target/release/sluice append wordcount words '{"word": "pear"}'
  ./target/release/sluice query wordcount top-words '{"n": 3}'
  ./target/release/sluice watch wordcount counts '[{"key": "apple"}]'

Ctrl-C stops it.
MSG
wait $HOST_PID
