#!/bin/sh
# make lab-freeswitch: run FreeSWITCH in the foreground with the lab configuration beside this
# script (conf/freeswitch/), its logs and databases in a throwaway directory, after printing how
# to place test calls. fsguard itself runs in another terminal (make run, or fsguard serve).
set -eu

here=$(cd "$(dirname "$0")" && pwd)

freeswitch=${FREESWITCH:-}
if [ -z "$freeswitch" ]; then
    for candidate in "$(command -v freeswitch 2>/dev/null || true)" /usr/local/freeswitch/bin/freeswitch \
                     /usr/bin/freeswitch /opt/freeswitch/bin/freeswitch; do
        if [ -n "$candidate" ] && [ -x "$candidate" ]; then
            freeswitch=$candidate
            break
        fi
    done
fi
if [ -z "$freeswitch" ]; then
    cat >&2 <<'EOF'
make lab-freeswitch: FreeSWITCH is not installed (no `freeswitch` on the PATH, nor in
/usr/local/freeswitch/bin, /usr/bin or /opt/freeswitch/bin).

  Install FreeSWITCH 1.10 (packages from SignalWire's repository, or built from source) with the
  modules listed in conf/freeswitch/autoload_configs/modules.conf.xml and the English sounds
  (freeswitch-sounds-en-us-callie), or point FREESWITCH=/path/to/freeswitch at your binary.

  Nothing to install for `make lab`: it runs fsguard against the built-in FreeSWITCH simulator.
EOF
    exit 1
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/fsguard-freeswitch-lab.XXXXXX")
mkdir -p "$work/log" "$work/db" "$work/run" "$work/temp"

fsguard_up=no
if command -v python3 >/dev/null 2>&1 && python3 - <<'EOF' 2>/dev/null
import socket
socket.create_connection(("127.0.0.1", 8084), timeout=1).close()
EOF
then
    fsguard_up=yes
fi

cat <<EOF
FreeSWITCH lab: $freeswitch
  configuration  $here
  logs           $work/log/freeswitch.log
  databases      $work/db

EOF
if [ "$fsguard_up" = no ]; then
    cat <<'EOF'
!! Nothing listens on 127.0.0.1:8084 yet: calls will take the dialplan's fallback (the support
   queue) until fsguard runs. Start it in another terminal, with the lab's demo policy and lists:

     .venv/bin/fsguard lab --keep /tmp/fsguard-lab
     FSGUARD_OUTBOUND_DIAL_TARGET='bridge loopback/{digits}/far_end' \
       .venv/bin/fsguard -c /tmp/fsguard-lab/fsguard.toml serve

   (or `make run` for the default policy)

EOF
fi
cat <<'EOF'
At the freeswitch> prompt:

  A caller (origination_uuid names the caller's leg, to send keys with):
    originate {origination_uuid=caller1,origination_caller_id_number=12125550101}loopback/18005550100/public &park

  A soft-blocked caller (fsguard lists add +13125550121 --block 2): fsguard plays the code in
  early media (look for digits/N.wav in the playback line), answers, beeps; key the code:
    bgapi originate {origination_uuid=caller2,origination_caller_id_number=13125550121}loopback/18005550100/public &park
    uuid_send_dtmf caller2 42

  A withheld number (privacy), a spoofed caller id (our own toll-free number):
    originate {origination_uuid=caller3,origination_privacy=hide_number,origination_caller_id_number=16175550131}loopback/18005550100/public &park
    originate {origination_uuid=caller4,origination_caller_id_number=18005550100}loopback/18005550100/public &park

  An agent (extension 1001) dialling out; three short calls freeze the number:
    originate {origination_uuid=agent1,origination_caller_id_number=1001}loopback/13055550161/default &park

  Agents in the queues (they answer through loopback, dialplan/lab.xml):
    callcenter_config agent set status 1000@default Available

  Hang a call up: uuid_kill caller1      Calls now: show channels      Leave: shutdown
  What fsguard decided, and why:  fsguard calls   /   fsguard calls show UUID

EOF

exec "$freeswitch" -nonat -nf -c -conf "$here" -log "$work/log" -db "$work/db" -run "$work/run" -temp "$work/temp"
