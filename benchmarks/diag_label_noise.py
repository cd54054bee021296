"""Issue 12 diagnostic: after each of 3 full epochs, the share of training rows the model
misclassifies or contradicts confidently (p of the given label < t), on MNIST-1D and on
noisy_digits (with recall and precision of "misclassified" against the flipped labels).
Run: python benchmarks/diag_label_noise.py"""
import numpy as np, torch, torch.nn.functional as F, sys
from graft_select.demo.harness import DemoConfig, load_data
from graft_select.demo.models import build_model
from graft_select.datasets import load_digits_split
torch.set_num_threads(1)
for ds in ("mnist1d", "noisy_digits"):
    cfg = DemoConfig(dataset=ds)
    Xtr, ytr, Xte, yte = load_data(cfg)
    flipped = None
    if ds == "noisy_digits":
        X, y, _, _ = load_digits_split(random_state=0)
        rng = np.random.default_rng([0, 1]); y = np.repeat(y, 6); rng.standard_normal((len(y), X.shape[1]))
        fl = rng.random(len(y)) < 0.15; rng.integers(1, 10, int(fl.sum())); order = rng.permutation(len(y))
        flipped = fl[order]
    X = torch.as_tensor(Xtr); Y = torch.as_tensor(ytr)
    torch.manual_seed(0); model = build_model(ds, X.shape[1], 10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    n = len(Y); g = torch.Generator().manual_seed(0)
    for ep in range(3):
        for b in torch.randperm(n, generator=g).split(128):
            loss = F.cross_entropy(model(X[b]), Y[b]); opt.zero_grad(); loss.backward(); opt.step()
        with torch.no_grad():
            p = torch.softmax(model(X), 1)
        py = p[torch.arange(n), Y]; po = p.clone(); po[torch.arange(n), Y] = 0; pmax = po.max(1).values
        mis = pmax > py
        line = f"{ds} ep{ep} mis {mis.float().mean():.3f} py<.05 {(py<.05).float().mean():.3f} py<.1 {(py<.1).float().mean():.3f} py<.2 {(py<.2).float().mean():.3f} pother>.9 {(pmax>.9).float().mean():.3f} pother>.7 {(pmax>.7).float().mean():.3f}"
        if flipped is not None:
            f = torch.as_tensor(flipped)
            line += f" | noise {f.float().mean():.3f} recall(mis) {mis[f].float().mean():.3f} prec(mis) {f[mis].float().mean():.3f} py_q(flipped) {np.quantile(py[f].numpy(), [.5,.9,.99]).round(3)} py_q(clean mis) {np.quantile(py[mis & ~f].numpy(), [.1,.5]).round(3) if (mis&~f).any() else None}"
        else:
            line += f" py_q(mis) {np.quantile(py[mis].numpy(), [.1,.25,.5,.9]).round(3)} pmax_q(mis) {np.quantile(pmax[mis].numpy(), [.1,.5,.9]).round(3)}"
        print(line, flush=True)
