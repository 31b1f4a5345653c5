"""Data-parallel training of a routed model, alone or on N processes under torchrun.

    torchrun --nproc_per_node 2 docs/examples/ddp_train.py      # N processes
    python docs/examples/ddp_train.py                           # a group of one
"""

import os
import socket

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from smakit.models import SeqBoat


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# torchrun sets these; run alone, this process is a group of one
alone = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1",
         "MASTER_ADDR": "127.0.0.1"}
for key, value in alone.items():
    os.environ.setdefault(key, value)
os.environ.setdefault("MASTER_PORT", str(free_port()))

cuda = torch.cuda.is_available()
local_rank = int(os.environ["LOCAL_RANK"])
device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
if cuda:
    torch.cuda.set_device(device)
dist.init_process_group("nccl" if cuda else "gloo")
rank, world = dist.get_rank(), dist.get_world_size()

torch.manual_seed(0)  # the same initial weights on every rank
model = SeqBoat(vocab_size=16, n_classes=4, dim=32, depth=2, window=8, qk_dim=16,
                density_target=0.3).to(device)
# no find_unused_parameters needed
ddp = DDP(model, device_ids=[local_rank] if cuda else None)
opt = torch.optim.AdamW(model.parameters(), lr=3e-3)

data = torch.Generator().manual_seed(1000 + rank)  # each rank draws its own batches
for _ in range(5):
    inputs = torch.randint(1, 16, (8, 64), generator=data)
    lengths = torch.randint(1, 65, (8,), generator=data)
    mask = torch.arange(64) < lengths[:, None]  # a short row may route nothing
    target = inputs[:, 0] % 4
    logits = ddp(inputs.to(device), mask.to(device))
    loss = F.cross_entropy(logits, target.to(device)) + model.aux_loss()
    opt.zero_grad()
    loss.backward()  # gradients all-reduced across ranks here
    opt.step()

if rank == 0:
    ratios = [round(r, 2) for r in model.routing_stats()["ratio"]]
    print(f"{world} process(es), loss {loss.item():.3f}, attention ratios {ratios}")
dist.destroy_process_group()
