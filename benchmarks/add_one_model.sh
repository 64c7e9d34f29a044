#!/bin/bash
# Counted from the cache, not inferred: a 12-model suite, then the same suite with a 13th model, then the 13
# models from scratch in a cache of their own. Real timm architectures with random weights (48 px; the ViT at
# 224), pocket-photos' first 40 images, mutual_knn (k = 5) and linear CKA. Prints what each run extracted and
# computed, and compares the grown run's scores with the from-scratch run's (about 2 minutes on 2 CPU cores).
#
#   bash benchmarks/add_one_model.sh [WORKDIR]
set -euo pipefail
work=${1:-$(mktemp -d)}
mkdir -p "$work/reg"
i=0
for src in resnet18 resnet10t resnet14t resnet26 resnet34 tf_efficientnet_lite0 mobilenetv3_small_050 \
           mobilenetv3_small_100 efficientnet_b0 regnetx_002 regnety_002 vit_tiny_patch16_224 ghostnet_100; do
  tags="[grow13, grow12]"; [ $i -eq 12 ] && tags="[grow13]"
  size=48; [ "$src" = vit_tiny_patch16_224 ] && size=224
  printf "kind: model\nid: m%02d-%s\nversion: 1\nbackend: timm\nsource: %s\nmodality: vision\nweights: {random: %d}\npreprocess: {input_size: [3, %d, %d]}\ntags: %s\n" \
    $i "$src" "$src" $i $size $size "$tags" > "$work/reg/m$i.yaml"
  i=$((i + 1))
done
for n in 12 13; do
  printf "kind: suite\nid: grow$n\nversion: 1\ndataset: pocket-photos\nmodels: {tags: [grow$n]}\nmetrics: [{name: mutual_knn, k: 5}, {name: cka}]\nmax_samples: 40\n" > "$work/reg/s$n.yaml"
done
run() {  # CACHE SUITE OUT: what the run extracted, read and computed, from its own report
  out=$(PRH_BENCH_CACHE="$work/$1" prh-bench --quiet --registry "$work/reg" run --suite "$2" --out "$work/$3")
  echo "$3: $(grep -c ' extracted ' <<<"$out" || true) models extracted, $(grep -c ' cached ' <<<"$out" || true) read from the cache"
  grep computed <<<"$out" | sed "s/^ */$3: /"
}
run cache grow12 r12
run cache grow13 r13            # the same cache, one model more
run cache grow13 r13-again      # nothing left to do
run scratch grow13 r13-scratch  # all 13 in a cache of their own
python - "$work" <<'PY'
import sys
import pandas as pd
work = sys.argv[1]
a, b = pd.read_csv(f"{work}/r13/scores.csv"), pd.read_csv(f"{work}/r13-scratch/scores.csv")
assert (a.drop(columns="score") == b.drop(columns="score")).all().all(), "different rows"
knn = a.metric == "mutual_knn"
print(f"mutual_knn: {knn.sum()} layer-pair scores, bitwise equal to scratch: {(a.score[knn].values == b.score[knn].values).all()}")
print(f"cka: {(~knn).sum()} layer-pair scores, largest difference to scratch: {abs(a.score[~knn].values - b.score[~knn].values).max():.2g}")
PY
