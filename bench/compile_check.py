"""torch.compile vs eager for the default model: time of the first step and steady training samples/s.

    .venv/bin/python bench/compile_check.py

Decides whether jobs compile (they do not: see docs/benchmarks.md).
"""
import time, torch, torch.nn.functional as F
from trainer.config import TrainConfig
from trainer.models import build_model
from trainer import data as D
cfg = TrainConfig.from_dict({"seed":0})
b = D.synthetic_dataset(0)
def run(model, n=40):
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    it = D.iterate_batches(b.train_images, b.train_labels, 64, shuffle=True, generator=torch.Generator().manual_seed(0))
    t0=time.perf_counter(); first=None
    for i,(x,y) in enumerate(it):
        if i==n: break
        c = model(D.encode(x,"direct",25,b.mean,b.std)).sum(0); l=F.cross_entropy(c,y)
        opt.zero_grad(); l.backward(); opt.step(); l.item()
        if i==0: first=time.perf_counter()-t0; t1=time.perf_counter()
    return first, (n-1)*64/(time.perf_counter()-t1)
torch.manual_seed(0); print("eager", run(build_model(cfg)))
torch.manual_seed(0); m=build_model(cfg); print("compiled", run(torch.compile(m)))
