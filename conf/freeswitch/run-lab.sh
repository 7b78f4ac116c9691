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

  Install FreeSWITCH 1.10 with the modules listed in conf/freeswitch/autoload_configs/modules.conf.xml
  (here: ../shared/freeswitch/install, as .ci/run does; elsewhere SignalWire's packages or a source
  build), or point FREESWITCH=/path/to/freeswitch at your binary. No sound pack is needed.

  Nothing to install for `make lab`: it runs fsguard against the built-in FreeSWITCH simulator.
EOF
    exit 1
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/fsguard-freeswitch-lab.XXXXXX")
mkdir -p "$work/log" "$work/db" "$work/run" "$work/temp" "$work/sounds" "$work/recordings"

# No sound pack is needed: the prompts fsguard plays are written as short tones.
python=${PYTHON:-$here/../../.venv/bin/python}
[ -x "$python" ] || python=python3
"$python" -m fsguard_testing.freeswitch prompts "$work/sounds" >/dev/null

export FSGUARD_LAB_SOCKET=${FSGUARD_LAB_SOCKET:-127.0.0.1:8084}
export FSGUARD_LAB_ESL_PORT=${FSGUARD_LAB_ESL_PORT:-8021}
export FSGUARD_LAB_SIP_PORT=${FSGUARD_LAB_SIP_PORT:-5080}
export FSGUARD_LAB_AGENT_PORT=${FSGUARD_LAB_AGENT_PORT:-5090}

fsguard_up=no
if command -v python3 >/dev/null 2>&1 && python3 - <<'EOF' 2>/dev/null
import socket
import os
host, port = os.environ.get("FSGUARD_LAB_SOCKET", "127.0.0.1:8084").split("|")[0].rsplit(":", 1)
socket.create_connection((host, int(port)), timeout=1).close()
EOF
then
    fsguard_up=yes
fi

cat <<EOF
FreeSWITCH lab: $freeswitch
  configuration  $here
  logs           $work/log/freeswitch.log
  databases      $work/db
  prompts        $work/sounds (tones, written by fsguard_testing.freeswitch)
  recordings     $work/recordings
  fsguard        $FSGUARD_LAB_SOCKET (socket target)   inbound ESL 127.0.0.1:$FSGUARD_LAB_ESL_PORT
  SIP            callers 127.0.0.1:$FSGUARD_LAB_SIP_PORT   agents' phones 127.0.0.1:$FSGUARD_LAB_AGENT_PORT

EOF
if [ "$fsguard_up" = no ]; then
    cat <<'EOF'
!! Nothing listens on $FSGUARD_LAB_SOCKET yet: calls will take the dialplan's fallback (the support
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

  Agents in the queues (their phones are the "agents" SIP profile; they answer and echo):
    callcenter_config agent set status 1000@default Available

  A real SIP INVITE (from another terminal), e.g. a forged display name:
    .venv/bin/python -m fsguard_testing.freeswitch invite --user 13125550166 \
        --display 'Eve%0ACaller-Caller-ID-Number%3A%2012125550101'

  Hang a call up: uuid_kill caller1      Calls now: show channels      Leave: shutdown
  What fsguard decided, and why:  fsguard calls   /   fsguard calls show UUID

EOF

exec "$freeswitch" -nonat -nf -c -conf "$here" -log "$work/log" -db "$work/db" -run "$work/run" -temp "$work/temp" \
    -sounds "$work/sounds" -recordings "$work/recordings"
