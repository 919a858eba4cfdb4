#!/bin/bash
# The technician's day of docs/technician.md, as it was run: tools/technician_day.sh [DIR]
# (default /tmp/tday2; outputs in DIR/NN.txt). Needs mosquitto and ffmpeg; starts a loopback
# broker, the agents, a monitor and a recorder simulator, and stops them all at the end.
set -u
WT=$(cd "$(dirname "$0")/.." && pwd)
D=${1:-/tmp/tday2}; mkdir -p "$D" && cd "$D" && rm -rf station room newdisk archive ports broker media [01][0-9].txt monitor.db* officers*.csv ./*.pid notes.mp4
export PATH=$WT/.venv/bin:$PATH

C=station/agent.toml; R=room/agent.toml
say() { echo "\$ $*"; }
PORT=$(python3 -c "import socket;s=socket.socket();s.bind(('127.0.0.1',0));print(s.getsockname()[1])")
mkdir -p broker ports && printf "listener $PORT 127.0.0.1\nallow_anonymous true\npersistence false\n" > broker/mosq.conf
mosquitto -c broker/mosq.conf > broker/log 2>&1 & echo $! > broker.pid
{ say edge-agent --version; edge-agent --version
  say edge-agent --config $C init --data-dir station/data --kind dock; edge-agent --config $C init --data-dir station/data --kind dock
  say edge-agent --config $C doctor --offline; edge-agent --config $C doctor --offline; echo "(exit $?)"; } > 01.txt 2>&1
{ for kv in "device.id dock-01" "device.unit_code 330106000000" "device.unit_name 西湖区综合行政执法局" "device.location 西湖区文三路18号采集室" "dock.admin_password 123456" "mqtt.port $PORT" "storage.reserve_mb 512"; do set -- $kv; say edge-agent --config $C config set $1 $2; edge-agent --config $C config set $1 "$2"; done
  say edge-agent --config $C config set dock.bays "'[{name = \"bay-1\", port = \"$PWD/ports/ttyREC1\"}]'"; edge-agent --config $C config set dock.bays "[{name = \"bay-1\", port = \"$PWD/ports/ttyREC1\"}]"
  say edge-agent archive enroll dock-01 station/data/keys/device.pub --unit 330106000000 --root archive --pin-to station/data; edge-agent archive enroll dock-01 station/data/keys/device.pub --unit 330106000000 --root archive --pin-to station/data
  say edge-agent --config $C doctor --offline; edge-agent --config $C doctor --offline; echo "(exit $?)"; } > 02.txt 2>&1
printf 'officer_number,name,unit,unit_name\n000123,张三,330106000000,西湖区综合行政执法局\n000124,李四,330106000000,西湖区综合行政执法局\n000125,王五,330106000000,西湖区综合行政执法局\n000126,赵六,330106000000,西湖区综合行政执法局\n000127,孙七,330106000000,西湖区综合行政执法局\n' > officers.csv
{ say edge-agent --config $C roster import officers.csv; edge-agent --config $C roster import officers.csv
  say python -m tools.media recorder $D/media --serial 1234567 --files 2 --seconds 2; (cd $WT && python -m tools.media recorder $D/media --serial 1234567 --files 2 --seconds 2); } > 03.txt 2>&1
edge-agent --config $C run > station/run.log 2>&1 & echo $! > station.pid
edge-agent monitor --db monitor.db --broker 127.0.0.1:$PORT --enrolment archive --no-tui > monitor.log 2>&1 & echo $! > monitor.pid
sleep 3
(cd $WT && exec python -m tools.recorder_sim --link $D/ports/ttyREC1 --media $D/media --password 123456 > $D/sim.log 2>&1) & echo $! > sim.pid
for i in $(seq 1 60); do s=$(edge-agent --config $C dock status --json 2>/dev/null | python3 -c "import json,sys; d=json.load(sys.stdin); print(d['bays'][0]['state'] if d.get('bays') else '-')" 2>/dev/null); case "$s" in uploading|done|error) break;; esac; sleep 1; done
sleep 2
{ say COLUMNS=80 edge-agent --config $C dock watch --once; COLUMNS=80 edge-agent --config $C dock watch --once
  say COLUMNS=100 edge-agent --config $C items list; COLUMNS=100 edge-agent --config $C items list
  say edge-agent --config $C uplink status; edge-agent --config $C uplink status
  say edge-agent --config $C status; edge-agent --config $C status; } > 04.txt 2>&1
ID=$(edge-agent --config $C items list --json | python3 -c "import json,sys; print(json.load(sys.stdin)[0]['id'])")
{ say edge-agent --config $C items annotate $ID --case '"杭西执罚〔2026〕第0456号"' --proof '"占道经营现场检查"'; edge-agent --config $C items annotate $ID --case "杭西执罚〔2026〕第0456号" --proof "占道经营现场检查"
  say edge-agent --config $C items annotate $ID --case '"杭西执罚〔2026〕第0457号"'; edge-agent --config $C items annotate $ID --case "杭西执罚〔2026〕第0457号"; echo "(exit $?)"
  say edge-agent --config $C items annotate $ID --case '"杭西执罚〔2026〕第0457号"' --reason '"案件编号录错"'; edge-agent --config $C items annotate $ID --case "杭西执罚〔2026〕第0457号" --reason "案件编号录错"
  say edge-agent --config $C verify $ID; edge-agent --config $C verify $ID; } > 05.txt 2>&1
head -c 200000 /dev/urandom > notes.mp4
mkdir -p room && (cd $WT && python -c "from tools.media import make_clip; make_clip('$D/room/front.mp4', seconds=20, size='640x360')")
A=(--case "杭西执罚〔2026〕第0458号" --collector 张三 --collector-id 33010001 --proof 现场检查过程)
{ say edge-agent --config $C ingest room/front.mp4 --case '"杭西执罚〔2026〕第0458号"' --collector 张三 --collector-id 33010001 --proof '"现场检查过程"'; edge-agent --config $C ingest room/front.mp4 "${A[@]}"
  say edge-agent --config $C ingest room/front.mp4 --case '"杭西执罚〔2026〕第0458号"' …     '# the same file again'; edge-agent --config $C ingest room/front.mp4 "${A[@]}"; echo "(exit $?)"
  say edge-agent --config $C ingest notes.mp4 --case '"杭西执罚〔2026〕第0458号"' …; edge-agent --config $C ingest notes.mp4 "${A[@]}"; echo "(exit $?)"
  say edge-agent --config $C ingest notes.mp4 --case '"杭西执罚〔2026〕第0458号"' … --kind other --json; edge-agent --config $C ingest notes.mp4 "${A[@]}" --kind other --json; } > 12.txt 2>&1
{ say edge-agent --config $R init --data-dir room/data --kind room --device-id room-01 --unit-code 330106000000 --unit-name 西湖区综合行政执法局 --location 西湖区文三路18号询问室; edge-agent --config $R init --data-dir room/data --kind room --device-id room-01 --unit-code 330106000000 --unit-name 西湖区综合行政执法局 --location 西湖区文三路18号询问室
  for kv in "room.cameras [\"file:$PWD/room/front.mp4\"]" "room.microphone tone" "room.size 704x576" "room.fps 10" "mqtt.port $PORT" "storage.reserve_mb 512"; do k=${kv%% *}; v=${kv#* }; say edge-agent --config $R config set $k "'$v'"; edge-agent --config $R config set $k "$v"; done
  say edge-agent archive enroll room-01 room/data/keys/device.pub --unit 330106000000 --root archive --pin-to room/data; edge-agent archive enroll room-01 room/data/keys/device.pub --unit 330106000000 --root archive --pin-to room/data
  say edge-agent --config $R doctor --offline; edge-agent --config $R doctor --offline; echo "(exit $?)"; } > 07.txt 2>&1
{ say COLUMNS=100 edge-agent monitor fleet --db monitor.db; COLUMNS=100 edge-agent monitor fleet --db monitor.db
  say edge-agent report ratio --db monitor.db; edge-agent report ratio --db monitor.db; } > 06.txt 2>&1
edge-agent --config $R run > room/run.log 2>&1 & echo $! > room.pid
for i in $(seq 1 30); do [ -S room/data/control.sock ] && break; sleep 1; done; sleep 2
{ say edge-agent --config $R room start --case '"杭西执罚〔2026〕第0456号"' --collector 张三 --collector-id 33010012345 --proof '"询问笔录同步录音录像"' --subject 李四; edge-agent --config $R room start --case "杭西执罚〔2026〕第0456号" --collector 张三 --collector-id 33010012345 --proof "询问笔录同步录音录像" --subject 李四; } > 08.txt 2>&1
sleep 25
{ say edge-agent --config $R room status; edge-agent --config $R room status
  say edge-agent --config $R room stop; edge-agent --config $R room stop
  say "edge-agent --config $R items list --json | jq -r '.[] | [.id, .state, .case_number, .size] | @tsv'"; edge-agent --config $R items list --json | python3 -c "import json,sys; [print(r['id'], r['state'], r['case_number'], r['size'], sep='\t') for r in json.load(sys.stdin)]"; } >> 08.txt 2>&1
sleep 6
{ say edge-agent report ratio --db monitor.db --json; edge-agent report ratio --db monitor.db --json
  say COLUMNS=100 edge-agent monitor fleet --db monitor.db; COLUMNS=100 edge-agent monitor fleet --db monitor.db; } > 09.txt 2>&1
{ say edge-agent --config $C uplink status; edge-agent --config $C uplink status
  say 'kill $(cat station.pid)    # on a station: systemctl stop edge-agent'; kill $(cat station.pid); for i in $(seq 1 30); do kill -0 $(cat station.pid) 2>/dev/null || break; sleep 0.5; done
  say 'cp -a station/data newdisk/data    # the new disk mounted at newdisk/'; mkdir -p newdisk && cp -a station/data newdisk/data
  say edge-agent --config $C init --data-dir newdisk/data; edge-agent --config $C init --data-dir newdisk/data
  say edge-agent --config $C audit verify; edge-agent --config $C audit verify
  say edge-agent --config $C verify --chain newdisk/data/spool/items; edge-agent --config $C verify --chain newdisk/data/spool/items
  say edge-agent --config $C recover; edge-agent --config $C recover
  say edge-agent --config $C status; edge-agent --config $C status; } > 10.txt 2>&1
printf 'officer_number,name,unit,unit_name\n100001,钱八,330108000000,滨江区综合行政执法局\n100002,周九,330108000000,滨江区综合行政执法局\n' > officers-binjiang.csv
{ say edge-agent --config $C init --unit-code 330108000000 --unit-name 滨江区综合行政执法局 --location 滨江区江南大道采集室; edge-agent --config $C init --unit-code 330108000000 --unit-name 滨江区综合行政执法局 --location 滨江区江南大道采集室
  say edge-agent --config $C roster import officers-binjiang.csv; edge-agent --config $C roster import officers-binjiang.csv
  say edge-agent archive enroll dock-01 newdisk/data/keys/device.pub --unit 330108000000 --root archive; edge-agent archive enroll dock-01 newdisk/data/keys/device.pub --unit 330108000000 --root archive; echo "(exit $?)"
  say edge-agent archive enroll dock-01 newdisk/data/keys/device.pub --unit 330108000000 --root archive --force; edge-agent archive enroll dock-01 newdisk/data/keys/device.pub --unit 330108000000 --root archive --force
  say edge-agent --config $C doctor --offline; edge-agent --config $C doctor --offline; echo "(exit $?)"; } > 11.txt 2>&1
for f in room.pid monitor.pid sim.pid broker.pid; do kill $(cat $f) 2>/dev/null; done
sleep 3
for f in room.pid monitor.pid sim.pid broker.pid station.pid; do kill -0 $(cat $f) 2>/dev/null && echo "STILL RUNNING $f"; done
echo day done
