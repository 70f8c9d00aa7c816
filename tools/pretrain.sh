#!/usr/bin/env bash
# Train one entry of the pretrained-model registry with its packaged recipe, and keep what
# `refconv pretrained publish` needs (not the checkpoints) as one small tarball.
#
#   tools/pretrain.sh NAME [DATA_DIR] [KEEP_DIR] [TRAIN FLAGS...]
#   tools/pretrain.sh fmnist/mobilenetv3_small_100 runs/data keep/       # on a GPU machine, see docs/pretrained.md
#   tools/pretrain.sh fmnist/mobilenetv3_small_100 "" /tmp/keep --epochs 1 --subset-train 256 --subset-test 128 \
#       --workers 0 --out /tmp/smoke                                     # a CPU smoke test of the whole path
#
# Runs from a checkout (PYTHONPATH=src), installed or not. Run again after an interruption: an unfinished
# run directory is resumed from its last checkpoint (saved at every epoch end), a finished one is kept.
# KEEP_DIR (default: $OUT, else runs/pretrained-keep) receives NAME-with-dashes.tgz holding config.yaml,
# done.json, metrics.jsonl, log.txt, model.safetensors, model.json and machine.txt (this host in words, which
# publish puts on the card); unpack it under runs/pretrained/ and
# publish with `refconv pretrained publish runs/pretrained/<stem> --name NAME`.
set -euo pipefail
name=${1:?usage: tools/pretrain.sh NAME [DATA_DIR] [KEEP_DIR] [TRAIN FLAGS...]}
data=${2:-}
keep=${3:-${OUT:-runs/pretrained-keep}}
shift $(( $# < 3 ? $# : 3 ))
extra=("$@")  # more `refconv train` flags; any that change the recipe make publish refuse without --allow-*
py=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
recipe=$("$py" -c "import sys; from refconv.models import pretrained as p; print(p.entry(sys.argv[1]).recipe)" "$name")
stem=${name//\//-}
run=runs/pretrained/$stem
for ((i = 0; i < ${#extra[@]}; i++)); do  # --out DIR among the extra flags moves the run directory
  if [ "${extra[$i]}" = "--out" ]; then run=${extra[$((i + 1))]}; fi
done
data_flags=()
if [ -n "$data" ]; then data_flags=(--data-dir "$data"); fi
start=$(date +%s)
if [ -f "$run/checkpoints/last.pt" ] && [ ! -f "$run/done.json" ]; then
  "$py" -m refconv.cli train --resume "$run" "${data_flags[@]}" --progress plain
else
  "$py" -m refconv.cli train --config "$recipe" --out "$run" "${data_flags[@]}" --progress plain "${extra[@]}"
fi
echo "$name: trained in $(( $(date +%s) - start )) s"
"$py" -c "from refconv.engine.publish import describe_host; print(describe_host())" > "$run/machine.txt"
mkdir -p "$keep"
tar czf "$keep/$stem.tgz" --transform "s,^,$stem/," -C "$run" \
  config.yaml done.json metrics.jsonl log.txt model.safetensors model.json machine.txt
echo "kept $keep/$stem.tgz ($(du -h "$keep/$stem.tgz" | cut -f1))"
