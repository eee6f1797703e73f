"""The measurements of a training run: the test pass (loss, top-1 and top-5 error) and the
probe (the EP estimate against BP on a fixed batch, and where the nudged phases ended). Each
returns the row that goes into ``metrics.jsonl``; the trainer writes it."""
from __future__ import annotations

import torch

from ..data.loader import EpochBatches, fixed_batch, make_loader, mix_seed, to_device
from ..engine import ep
from ..engine.blocks import kept_statistics
from ..engine.energy import cost
from ..engine.precision import Precision, forward, precision_context
from .config import TrainConfig
from .distributed import Dist

__all__ = ["Evaluation", "sync_statistics"]


def sync_statistics(net, dist: Dist) -> None:
    """Every process's running statistics (BatchNorm) become their mean over the processes,
    so that evaluation and the checkpoint see one model (each process normalises by its own
    slice of the batch in training, as DDP does without SyncBatchNorm)."""
    dist.average([b for b in net.buffers() if b.is_floating_point()])


class Evaluation:
    """The test set of a run and how it is measured: its first ``n_test`` examples, split over
    the processes, in the run's precision (``workers``: the loader's processes)."""

    def __init__(self, cfg: TrainConfig, test_set, dist: Dist, device: torch.device,
                 precision: Precision, pin_memory: bool, workers: int = 0):
        self.cfg, self.test_set, self.dist, self.device = cfg, test_set, dist, device
        self.precision = precision
        self.n_test = min(len(test_set), cfg.limit_test or len(test_set))
        self.sampler = EpochBatches(self.n_test, cfg.eval_batch_size, shuffle=False,
                                    drop_last=False, rank=dist.rank, world=dist.world)
        self.loader = make_loader(test_set, self.sampler, workers=workers,
                                  pin_memory=pin_memory)

    @torch.no_grad()
    def test(self, net) -> dict:
        """Test loss and top-1 / top-5 error (fractions) over the first ``n_test`` examples,
        with the running statistics averaged over the processes and the model in eval mode
        (normalisation by the running statistics), one forward pass in the run's precision
        (:func:`workbench.engine.precision.forward`, as BP's)."""
        k = min(5, net.num_classes)
        totals = torch.zeros(4, dtype=torch.float64, device=self.device)
        self.sampler.set_epoch(0)
        sync_statistics(net, self.dist)
        net.eval()
        with precision_context(self.precision):
            for x, y in self.loader:
                x, y = to_device(self.test_set, x, y, self.device)
                logits = forward(net, x, self.precision).float()
                top = logits.topk(k, 1).indices
                totals += torch.stack([
                    torch.tensor(float(len(y)), device=self.device),
                    cost(self.cfg.estimator.cost, logits, y).double().sum(),
                    (top[:, 0] != y).double().sum(),
                    (~(top == y[:, None]).any(1)).double().sum()])
        net.train()
        self.dist.sum([totals])
        n, loss, wrong1, wrongk = totals.tolist()
        return {"test_loss": loss / n, "test_top1_error": wrong1 / n,
                "test_top5_error": wrongk / n}

    def probe(self, net, epoch: int, step: int) -> dict:
        """The probe row: per-layer cosine / relative error of the EP estimate vs BP on the
        fixed probe batch (``probe_size`` test examples drawn once from the seed), and where
        the nudged phases end — per layer, the fraction of ReLU units and of pooling windows
        that switched against the free state (mean over the phases) and the fixed-point
        residual (max over the phases). The running statistics are left as they were."""
        cfg, s = self.cfg, self.cfg.estimator
        gen = torch.Generator().manual_seed(mix_seed(cfg.seed, "probe"))
        idx = torch.randperm(self.n_test, generator=gen)[:cfg.probe_size].tolist()
        x, y = to_device(self.test_set, *fixed_batch(self.test_set, idx), self.device)
        with kept_statistics(net):
            ref, _, _ = ep.bp_gradients(net, x, y, s.cost, "strict")
            est = ep.estimate(net, x, y, s, trace=False, accumulate=False, generator=gen,
                              diagnostics=True)
        rows = ep.compare(net, est.grads, ref)
        phases = est.trace.phases
        return {"type": "probe", "epoch": epoch, "step": step,
                "scheme": s.scheme, "beta": s.beta, "iterations": s.iterations,
                "cosine": [r["cosine"] for r in rows],
                "rel_error": [r["rel_error"] for r in rows],
                "final_energy": sum(p.final_energy for p in phases) / len(phases),
                "switched": torch.stack([p.switched[-1] for p in phases]).mean(0).tolist(),
                "pool_changed": torch.stack([p.pool_changed[-1] for p in phases])
                .mean(0).tolist(),
                "residual": torch.stack([p.residual_max[-1] for p in phases])
                .amax(0).tolist()}
