#!/usr/bin/env bash
# Launch train.py under torchrun; Lightning's TorchElasticEnvironment reads the ranks torchrun sets.
#   One node:   configs/launch/torchrun.sh 8 configs/pretrain/coke_imagenet.yaml [key=value ...]
#   N nodes:    on every node: NNODES=N NODE_RANK=<0..N-1> MASTER_ADDR=<node 0 host> configs/launch/torchrun.sh 8 CONFIG ...
set -euo pipefail
GPUS_PER_NODE=${1:?usage: torchrun.sh GPUS_PER_NODE CONFIG [key=value ...]}
CONFIG=${2:?usage: torchrun.sh GPUS_PER_NODE CONFIG [key=value ...]}
shift 2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

cd "$(dirname "$0")/../.."
exec torchrun --nnodes="${NNODES}" --node_rank="${NODE_RANK}" --nproc_per_node="${GPUS_PER_NODE}" \
    --master_addr="${MASTER_ADDR}" --master_port="${MASTER_PORT}" \
    train.py "${CONFIG}" trainer.devices="${GPUS_PER_NODE}" trainer.num_nodes="${NNODES}" trainer.strategy=ddp "$@"
