#!/usr/bin/env bash
# The steering and socket options measured before and after in the tuning
# kit's network-namespace lab (benches/netns-variants.sh), each an
# interleaved `loadgen compare` whose JSON lands in benches/results/
# (ROUNDS, default 3; DURATION, default 3 s). benches/tables.sh prints the
# tables again from those files. Needs root; about 5 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-3} duration=${DURATION:-3}
out=benches/results
mkdir -p "$out"
v=benches/netns-variants.sh

# Which core's listener takes a connection: the connection rate and the
# ping-pong of tunnels whose client runs on both CPUs.
$v "$out/steering-cps.json" '--queues 2' 'hash=' \
  'incoming-cpu=--listen-steering incoming-cpu' 'cpu-bpf=--listen-steering cpu-bpf' \
  -- --rounds "$rounds" cps --cores 0,1 --concurrency 4 --duration "$duration"
$v "$out/steering-pingpong.json" '--queues 2' 'hash=' \
  'incoming-cpu=--listen-steering incoming-cpu' 'cpu-bpf=--listen-steering cpu-bpf' \
  -- --rounds "$rounds" latency --cores 0,1 --closed-loop --connections 8 --size 64 --duration "$duration"
# Accept only once the greeting is there.
$v "$out/defer-accept-cps.json" '--queues 2' 'off=' 'defer-accept=--defer-accept 1s' \
  -- --rounds "$rounds" cps --cores 0,1 --concurrency 4 --duration "$duration"
# Busy polling of the sockets' queues.
$v "$out/busy-poll-pingpong.json" '--queues 2' 'off=' 'busy-poll=--busy-poll 50' \
  'busy-poll-prefer=--busy-poll 50 --prefer-busy-poll' \
  -- --rounds "$rounds" latency --cores 0,1 --closed-loop --connections 8 --size 64 --duration "$duration"
# Fixed socket buffers against autotuning, on a path with 2 ms each way
# between proxy and target (a bandwidth-delay product of about 1 MB at
# 2 Gbit/s).
$v "$out/buffers-delay.json" '--queues 2 --delay 2ms' 'autotuned=' \
  'fixed-64k=--socket-receive-buffer 65536 --socket-send-buffer 65536' \
  'fixed-4m=--socket-receive-buffer 4194304 --socket-send-buffer 4194304' \
  -- --rounds "$rounds" throughput --streams 1 --direction down --duration "$duration"
# The congestion control toward targets on a long, lossy path (5 ms each
# way, 0.1% of frames lost, between proxy and target): an upload, so the
# proxy's target socket is the sender over that path.
$v "$out/congestion-lossy-upload.json" '--queues 2 --delay 5ms --loss 0.1%' \
  'cubic=--target-congestion cubic' 'bbr=--target-congestion bbr' \
  -- --rounds "$rounds" throughput --streams 1 --direction up --duration "$duration"
