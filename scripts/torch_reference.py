#!/usr/bin/env python3
"""PyTorch eager (CPU, float32) reference of the switchyard model (DESIGN.md §2),
used as a training-step speed baseline for the Rust CPU backend.

Usage:
  python3 scripts/torch_reference.py --config scripts/presets/tiny.toml \
      [--threads 2] [--steps 20] [--warmup 3] [--json OUT.json] \
      [--expert-impl loop|bmm] [--adamw default|foreach|fused] [--selftest]

It reads the TOML schema of src/config.rs ([model], [train]; [data] is ignored),
trains on random token batches [train.batch_size, train.seq_len + 1] (inputs are
the first seq_len columns, targets the shifted ones; content does not matter for
speed), and times whole optimizer steps: zero_grad + forward + backward (over
train.grad_accum micro-batches) + global-norm clip + AdamW step. It prints the
median / mean step time and training tokens/s (batch_size * seq_len *
grad_accum / step time), the torch version and the thread count.

Install (PyPI only; no download.pytorch.org, so no CPU-only wheel). The Linux
x86-64 `torch` wheel on PyPI is a CUDA build whose libtorch_cuda.so /
libtorch_python.so link the CUDA libraries at load time, so `import torch`
fails without them (`libcudart.so.13: cannot open shared object file`), even
on a CPU-only run. The lightest working set skips triton, cuda-bindings,
cusolver and nvtx (not needed to import or to run on the CPU); ~4.1 GB venv,
about 1 minute:

  python3 -m venv /tmp/torchenv
  /tmp/torchenv/bin/pip install --no-deps torch==2.15.0
  /tmp/torchenv/bin/pip install filelock typing-extensions sympy networkx \
      jinja2 fsspec mpmath markupsafe 'setuptools>=77.0.3' numpy
  /tmp/torchenv/bin/pip install \
      'cuda-toolkit[cublas,cudart,cufft,cufile,cupti,nvrtc,cusparse,nvjitlink]==13.2.2' \
      nvidia-cudnn-cu13==9.26.0.51 nvidia-cusparselt-cu13==0.8.1 \
      nvidia-nccl-cu13==2.30.7 nvidia-nvshmem-cu13==3.7.2
  /tmp/torchenv/bin/python scripts/torch_reference.py --config scripts/presets/tiny.toml

(The pinned nvidia versions are those torch 2.15.0's metadata requires; for
another torch version read them from its METADATA Requires-Dist lines.)

Model choices (DESIGN.md §2): pre-LN decoder, LayerNorm eps 1e-5, fused qkv
[d,3d]+bias and proj [d,d]+bias, causal F.scaled_dot_product_attention,
GELU(tanh) MLP, tied LM head, Switch MoE FFN on layers with
(l+1) % moe_every == 0: fp32 router (no bias), softmax, top-k with ties to the
lower expert index (stable sort), capacity C = ceil(cf*k*N/E) (cf <= 0:
dropless, C = N), slot order "all j-th choices before (j+1)-th, earlier tokens
first", dropped assignments contribute 0, optional gate normalization, aux loss
alpha*E*sum_e f_e*P_e and z-loss beta*mean(logsumexp(z)^2). AdamW with decay on
matrices only (unless decay_all), global-norm clipping at train.grad_clip,
linear-warmup + cosine LR. Truncated-normal init (2 std). Linear weights are
kept in nn.Linear's [out, in] layout (the checkpoint layout [in, out] is only
a transpose; it does not change the speed).
"""

import argparse
import json
import math
import os
import statistics
import sys
import time
import tomllib

import torch
import torch.nn as nn
import torch.nn.functional as F


# ----------------------------------------------------------------------------
# config


def load_config(path):
    with open(path, "rb") as f:
        cfg = tomllib.load(f)
    for sec in ("model", "train"):
        if sec not in cfg:
            sys.exit(f"{path}: missing section [{sec}]")
    m, t = cfg["model"], cfg["train"]
    need_m = ["vocab_size", "max_seq_len", "n_layer", "n_head", "d_model", "d_ff",
              "moe_every", "n_experts", "top_k", "capacity_factor",
              "eval_capacity_factor", "normalize_gates", "router_jitter",
              "aux_loss_coef", "z_loss_coef", "init_scale", "router_init_std",
              "embed_init_std"]
    need_t = ["seed", "batch_size", "seq_len", "grad_accum", "steps", "lr", "min_lr",
              "warmup_steps", "weight_decay", "decay_all", "beta1", "beta2", "eps",
              "grad_clip"]
    for sec, d, keys in (("model", m, need_m), ("train", t, need_t)):
        for k in keys:
            if k not in d:
                sys.exit(f"{path}: missing key {sec}.{k}")
    if m["d_model"] % m["n_head"] != 0:
        sys.exit("model.d_model must be divisible by model.n_head")
    if t["seq_len"] > m["max_seq_len"]:
        sys.exit("train.seq_len exceeds model.max_seq_len")
    return m, t


def is_moe_layer(m, l):
    return m["moe_every"] > 0 and (l + 1) % m["moe_every"] == 0


def capacity(cf, k, n, e):
    return n if cf <= 0 else int(math.ceil(cf * (k * n) / e))


def trunc_normal_(w, std):
    nn.init.trunc_normal_(w, mean=0.0, std=std, a=-2.0 * std, b=2.0 * std)


# ----------------------------------------------------------------------------
# model


class Attention(nn.Module):
    def __init__(self, m):
        super().__init__()
        d = m["d_model"]
        self.n_head = m["n_head"]
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)

    def forward(self, x):
        B, T, d = x.shape
        H = self.n_head
        q, k, v = self.qkv(x).split(d, dim=-1)
        q = q.view(B, T, H, d // H).transpose(1, 2)
        k = k.view(B, T, H, d // H).transpose(1, 2)
        v = v.view(B, T, H, d // H).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # scale 1/sqrt(hd)
        y = y.transpose(1, 2).reshape(B, T, d)
        return self.proj(y)


class MLP(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.fc = nn.Linear(m["d_model"], m["d_ff"])
        self.proj = nn.Linear(m["d_ff"], m["d_model"])

    def forward(self, x):
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))


def route(z, k, cap, normalize_gates):
    """Router decisions from fp32 logits z [N, E].

    Returns p [N,E], gates [N,k], experts [N,k] (long), slot position [k*N] and
    kept mask [k*N] of the assignments flattened choice-major (a = j*N + n),
    and the pre-capacity assignment counts per expert [E].
    """
    N, E = z.shape
    p = torch.softmax(z, dim=-1)
    if k == 1:
        # argmax returns the first maximal index: ties go to the lower expert.
        experts = p.argmax(dim=-1, keepdim=True)
    else:
        # stable descending sort keeps the lower index first among equal p.
        experts = torch.sort(p, dim=-1, descending=True, stable=True).indices[:, :k]
    gates = p.gather(1, experts)
    if normalize_gates:
        gates = gates / gates.sum(dim=-1, keepdim=True)
    flat_e = experts.t().reshape(-1)  # choice-major: all first choices, then second, ...
    onehot = F.one_hot(flat_e, E)  # [kN, E] int64
    pos = ((onehot.cumsum(dim=0) - 1) * onehot).sum(dim=-1)  # rank within expert
    kept = pos < cap
    counts = onehot.sum(dim=0)
    return p, gates, experts, flat_e, pos, kept, counts


class SwitchMoE(nn.Module):
    def __init__(self, m, expert_impl):
        super().__init__()
        d, f, E = m["d_model"], m["d_ff"], m["n_experts"]
        self.m = m
        self.E, self.k = E, m["top_k"]
        self.expert_impl = expert_impl
        self.router = nn.Parameter(torch.empty(d, E))  # [d, E], no bias
        self.fc_w = nn.Parameter(torch.empty(E, d, f))  # [E, d, d_ff] (in, out)
        self.fc_b = nn.Parameter(torch.zeros(E, f))
        self.proj_w = nn.Parameter(torch.empty(E, f, d))  # [E, d_ff, d]
        self.proj_b = nn.Parameter(torch.zeros(E, d))
        self.stats = {}

    def forward(self, x):
        B, T, d = x.shape
        u = x.reshape(B * T, d)
        N, E, k = u.shape[0], self.E, self.k
        m = self.m
        cf = m["capacity_factor"] if self.training else m["eval_capacity_factor"]
        cap = capacity(cf, k, N, E)

        ur = u.float()
        eps = m["router_jitter"]
        if self.training and eps > 0:
            ur = ur * torch.empty_like(ur).uniform_(1.0 - eps, 1.0 + eps)
        z = ur @ self.router.float()  # fp32 router logits [N, E]
        p, gates, experts, flat_e, pos, kept, counts = route(
            z, k, cap, m["normalize_gates"])

        # losses
        f_e = counts.to(p.dtype) / (N * k)  # not differentiable
        P_e = p.mean(dim=0)
        aux = m["aux_loss_coef"] * E * (f_e * P_e).sum()
        lse = torch.logsumexp(z, dim=-1)
        zl = m["z_loss_coef"] * (lse * lse).mean()

        # dispatch: kept assignments, sorted by expert, slot order inside each
        flat_tok = torch.arange(N, device=u.device).repeat(k)
        flat_g = gates.t().reshape(-1)
        kidx = kept.nonzero(as_tuple=True)[0]
        if self.expert_impl == "loop":
            # stable sort of the choice-major kept list by expert = slot order
            order = kidx[torch.sort(flat_e[kidx], stable=True).indices]
            tok = flat_tok[order]
            kept_counts = torch.bincount(flat_e[order], minlength=E).tolist()
            xs = u.index_select(0, tok)
            ys = []
            for e, xe in enumerate(xs.split(kept_counts, dim=0)):
                if xe.shape[0] == 0:
                    continue
                h = F.gelu(torch.addmm(self.fc_b[e], xe, self.fc_w[e]), approximate="tanh")
                ys.append(torch.addmm(self.proj_b[e], h, self.proj_w[e]))
            y = torch.cat(ys, dim=0) * flat_g[order].unsqueeze(1).to(u.dtype)
            out = torch.zeros_like(u).index_add_(0, tok, y)
        else:  # "bmm": padded [E, C, d] buffers, strided-batched matmuls
            slot = flat_e[kidx] * cap + pos[kidx]
            tok = flat_tok[kidx]
            buf = u.new_zeros(E * cap, d).index_copy_(0, slot, u.index_select(0, tok))
            h = F.gelu(torch.baddbmm(self.fc_b.unsqueeze(1), buf.view(E, cap, d), self.fc_w),
                       approximate="tanh")
            yb = torch.baddbmm(self.proj_b.unsqueeze(1), h, self.proj_w).view(E * cap, d)
            y = yb.index_select(0, slot) * flat_g[kidx].unsqueeze(1).to(u.dtype)
            out = torch.zeros_like(u).index_add_(0, tok, y)

        with torch.no_grad():  # per-layer research stats (cheap)
            ent = -(p * torch.log(p.clamp_min(1e-30))).sum(-1).mean()
            self.stats = {
                "tokens_per_expert": counts,
                "dropped_frac": 1.0 - kept.float().mean(),
                "aux": aux.detach(),
                "z_loss": zl.detach(),
                "router_entropy": ent,
            }
        return out.view(B, T, d), aux + zl


class Block(nn.Module):
    def __init__(self, m, l, expert_impl):
        super().__init__()
        d = m["d_model"]
        self.ln_1 = nn.LayerNorm(d, eps=1e-5)
        self.attn = Attention(m)
        self.ln_2 = nn.LayerNorm(d, eps=1e-5)
        self.is_moe = is_moe_layer(m, l)
        if self.is_moe:
            self.moe = SwitchMoE(m, expert_impl)
        else:
            self.mlp = MLP(m)

    def forward(self, h):
        h = h + self.attn(self.ln_1(h))
        if self.is_moe:
            y, extra = self.moe(self.ln_2(h))
            return h + y, extra
        return h + self.mlp(self.ln_2(h)), None


class SwitchLM(nn.Module):
    def __init__(self, m, expert_impl="loop"):
        super().__init__()
        self.m = m
        V, d = m["vocab_size"], m["d_model"]
        self.wte = nn.Embedding(V, d)
        self.wpe = nn.Embedding(m["max_seq_len"], d)
        self.h = nn.ModuleList([Block(m, l, expert_impl) for l in range(m["n_layer"])])
        self.ln_f = nn.LayerNorm(d, eps=1e-5)
        self._init()

    @torch.no_grad()
    def _init(self):
        m = self.m
        s = m["init_scale"]
        trunc_normal_(self.wte.weight, m["embed_init_std"])
        trunc_normal_(self.wpe.weight, m["embed_init_std"])
        for mod in self.modules():
            if isinstance(mod, nn.Linear):
                trunc_normal_(mod.weight, math.sqrt(s / mod.in_features))
                nn.init.zeros_(mod.bias)
            elif isinstance(mod, nn.LayerNorm):
                nn.init.ones_(mod.weight)
                nn.init.zeros_(mod.bias)
            elif isinstance(mod, SwitchMoE):
                trunc_normal_(mod.router, m["router_init_std"])
                trunc_normal_(mod.fc_w, math.sqrt(s / m["d_model"]))
                trunc_normal_(mod.proj_w, math.sqrt(s / m["d_ff"]))
                mod.fc_b.zero_()
                mod.proj_b.zero_()

    def forward(self, idx, targets):
        B, T = idx.shape
        pos = torch.arange(T, device=idx.device)
        h = self.wte(idx) + self.wpe(pos)
        extra = 0.0
        for blk in self.h:
            h, e = blk(h)
            if e is not None:
                extra = extra + e
        logits = self.ln_f(h) @ self.wte.weight.t()  # tied LM head
        ce = F.cross_entropy(logits.view(B * T, -1), targets.reshape(-1))
        return ce + extra, ce


def param_groups(model, t):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        # matrices: Linear weights, the router and the stacked expert weights;
        # not biases (the stacked expert biases are 2-D too), LayerNorm or embeddings
        is_bias = name.endswith(("bias", "fc_b", "proj_b"))
        is_matrix = p.dim() >= 2 and not is_bias and not name.startswith(("wte", "wpe"))
        (decay if (is_matrix or t["decay_all"]) else no_decay).append(p)
    return [{"params": decay, "weight_decay": t["weight_decay"]},
            {"params": no_decay, "weight_decay": 0.0}]


def lr_at(t, step):
    if step < t["warmup_steps"]:
        return t["lr"] * (step + 1) / t["warmup_steps"]
    span = max(1, t["steps"] - t["warmup_steps"])
    frac = min(1.0, (step - t["warmup_steps"]) / span)
    return t["min_lr"] + 0.5 * (t["lr"] - t["min_lr"]) * (1.0 + math.cos(math.pi * frac))


# ----------------------------------------------------------------------------
# routing self-test against a naive transcription of DESIGN.md §2 steps 3-5


def selftest():
    g = torch.Generator().manual_seed(0)
    for (N, E, k, cf, norm) in [(37, 4, 1, 1.0, False), (50, 5, 2, 1.25, True),
                                (64, 8, 2, 0.5, False), (20, 3, 3, 0.0, True)]:
        z = torch.randn(N, E, generator=g)
        z[0, :] = 0.0  # ties -> lower index
        z[1, 1] = z[1, 2] = 5.0
        cap = capacity(cf, k, N, E)
        p, gates, experts, flat_e, pos, kept, counts = route(z, k, cap, norm)
        pl = torch.softmax(z, -1).tolist()
        fill = [0] * E
        want_pos = {}
        choice = []
        for n in range(N):
            order = sorted(range(E), key=lambda e: (-pl[n][e], e))[:k]
            choice.append(order)
        for j in range(k):
            for n in range(N):
                e = choice[n][j]
                want_pos[(n, j)] = fill[e]
                fill[e] += 1
        for n in range(N):
            gs = [pl[n][e] for e in choice[n]]
            if norm:
                s = sum(gs)
                gs = [x / s for x in gs]
            for j in range(k):
                assert experts[n, j].item() == choice[n][j], (n, j)
                assert abs(gates[n, j].item() - gs[j]) < 1e-6
                a = j * N + n
                assert pos[a].item() == want_pos[(n, j)]
                assert kept[a].item() == (want_pos[(n, j)] < cap)
        assert counts.tolist() == fill
    # both expert implementations give the same layer output and gradients
    m = dict(d_model=16, d_ff=32, n_experts=4, top_k=2, capacity_factor=1.0,
             eval_capacity_factor=2.0, normalize_gates=True, router_jitter=0.0,
             aux_loss_coef=0.01, z_loss_coef=0.001)
    torch.manual_seed(0)
    a, b = SwitchMoE(m, "loop"), SwitchMoE(m, "bmm")
    for prm in a.parameters():
        nn.init.normal_(prm, std=0.3)
    b.load_state_dict(a.state_dict())
    x = torch.randn(3, 11, 16)
    ya, la = a(x)
    yb, lb = b(x)
    assert torch.allclose(ya, yb, atol=1e-5) and torch.allclose(la, lb)
    (ya.square().sum() + la).backward()
    (yb.square().sum() + lb).backward()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-4)
    print("selftest: routing (top-k ties, gates, slot order, capacity) and loop/bmm parity OK")


# ----------------------------------------------------------------------------
# main


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="switchyard TOML config")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20, help="timed steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--json", help="write results here")
    ap.add_argument("--expert-impl", choices=["loop", "bmm"], default="loop",
                    help="loop: gather kept tokens sorted by expert, one dense matmul "
                         "pair per expert (default); bmm: padded [E,C,d] baddbmm")
    ap.add_argument("--adamw", choices=["default", "foreach", "fused"], default="default",
                    help="torch.optim.AdamW implementation (default: torch's choice, "
                         "the per-tensor loop on CPU)")
    ap.add_argument("--selftest", action="store_true", help="check routing first")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    if args.selftest:
        selftest()
    m, t = load_config(args.config)
    torch.manual_seed(t["seed"])
    model = SwitchLM(m, args.expert_impl)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    kw = {}
    if args.adamw == "foreach":
        kw["foreach"] = True
    elif args.adamw == "fused":
        kw["fused"] = True
    opt = torch.optim.AdamW(param_groups(model, t), lr=t["lr"],
                            betas=(t["beta1"], t["beta2"]), eps=t["eps"], **kw)

    B, T, A = t["batch_size"], t["seq_len"], t["grad_accum"]
    gen = torch.Generator().manual_seed(t["seed"])
    total = args.warmup + args.steps
    batches = [torch.randint(0, m["vocab_size"], (A, B, T + 1), generator=gen)
               for _ in range(total)]
    params = [p for p in model.parameters()]

    def train_step(step, data):
        for g in opt.param_groups:
            g["lr"] = lr_at(t, step)
        opt.zero_grad(set_to_none=True)
        loss_sum = 0.0
        for a in range(A):
            x, y = data[a, :, :T], data[a, :, 1:]
            loss, ce = model(x, y)
            (loss / A).backward()
            loss_sum += ce.detach()
        if t["grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(params, t["grad_clip"])
        opt.step()
        return loss_sum / A

    load_before = os.getloadavg()
    times, losses = [], []
    for step in range(total):
        t0 = time.perf_counter()
        ce = train_step(step, batches[step])
        dt = time.perf_counter() - t0
        losses.append(float(ce))
        if step >= args.warmup:
            times.append(dt)

    tok = B * T * A
    med, mean = statistics.median(times), statistics.mean(times)
    moe_stats = {}
    for l, blk in enumerate(model.h):
        if blk.is_moe:
            s = blk.moe.stats
            moe_stats[str(l)] = {
                "tokens_per_expert": s["tokens_per_expert"].tolist(),
                "dropped_frac": float(s["dropped_frac"]),
                "aux": float(s["aux"]), "z_loss": float(s["z_loss"]),
                "router_entropy": float(s["router_entropy"]),
            }
    res = {
        "config": os.path.abspath(args.config),
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "expert_impl": args.expert_impl,
        "adamw": args.adamw,
        "batch_size": B, "seq_len": T, "grad_accum": A, "tokens_per_step": tok,
        "n_params": n_params,
        "moe_layers": [l for l in range(m["n_layer"]) if is_moe_layer(m, l)],
        "warmup_steps_untimed": args.warmup, "timed_steps": args.steps,
        "step_time_median_s": med, "step_time_mean_s": mean,
        "step_time_min_s": min(times), "step_time_max_s": max(times),
        "tokens_per_s_median": tok / med, "tokens_per_s_mean": tok / mean,
        "step_times_s": times,
        "loadavg_1_5_15_before": list(load_before),
        "loadavg_1_5_15_after": list(os.getloadavg()),
        "loss_first": losses[0], "loss_last": losses[-1],
        "last_step_moe_stats": moe_stats,
    }
    print(f"torch {res['torch_version']}  threads {res['threads']}  "
          f"config {args.config}  params {n_params:,}  expert_impl {args.expert_impl}  "
          f"adamw {args.adamw}")
    print(f"batch {B}x{T} (x{A} accum) = {tok} tokens/step; "
          f"{args.warmup} warmup + {args.steps} timed steps; "
          f"loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    print(f"step time: median {med*1e3:.2f} ms  mean {mean*1e3:.2f} ms  "
          f"(min {min(times)*1e3:.2f}, max {max(times)*1e3:.2f})")
    print(f"tokens/s: {tok/med:,.0f} (median)  {tok/mean:,.0f} (mean)")
    print(f"load average before/after: {load_before[0]:.2f} / {os.getloadavg()[0]:.2f} "
          f"(other processes on the {os.cpu_count()} cores skew the times)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
            f.write("\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
