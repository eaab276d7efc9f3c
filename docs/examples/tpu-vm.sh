#!/bin/bash
# Train on a single-host Cloud TPU VM: create it, copy this repository onto it, run train.py there.
# Run from the repository root. TPUStrategy finds the TPU of the VM itself (--tpu=local); no
# cluster variable is involved, and the outputs go to a gs:// model_dir.
set -euo pipefail

ZONE=us-central1-a
TPU_NAME=tf-harness
ACCELERATOR=v5litepod-8  # one host with 8 chips; multi-host slices are not supported yet
# A TensorFlow TPU runtime matching pyproject.toml's TensorFlow (tpu-vm-tf-<version>-pjrt); list them with
#   gcloud compute tpus tpu-vm versions list --zone=$ZONE
RUNTIME=tpu-vm-tf-2.21.0-pjrt

gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" --accelerator-type="$ACCELERATOR" --version="$RUNTIME"
gcloud compute tpus tpu-vm scp --recurse . "$TPU_NAME":~/tf-harness --zone="$ZONE"
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" \
    --command="cd ~/tf-harness && python scripts/train.py --strategy=tpu --tpu=local --model_dir=gs://BUCKET/runs/tpu --dataset=mnist --download_data --data_dir=gs://BUCKET/tfds"
