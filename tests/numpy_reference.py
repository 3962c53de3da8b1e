"""Independent NumPy (float64) implementations of each cell's formula, written from the papers
and PyTorch's documentation rather than from fnn_jax's code."""

import numpy as np


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


ACT = {
    "tanh": np.tanh,
    "relu": lambda x: np.maximum(x, 0.0),
    "leaky_relu": lambda x: np.where(x >= 0, x, 0.01 * x),
    "sigmoid": sigmoid,
    "identity": lambda x: x,
}


def elman(p, h, x, activation="tanh"):
    h = ACT[activation](x @ p["w_ih"] + p["b_ih"] + h @ p["w_hh"] + p["b_hh"])
    return h, h


def jordan(p, y, x, activation="tanh", output_activation="tanh"):
    h = ACT[activation](x @ p["w_ih"] + y @ p["w_yh"] + p["b"])
    y = ACT[output_activation](h @ p["w_hy"] + p["b_y"])
    return y, y


def lstm(p, hc, x):
    h, c = hc
    n = h.shape[-1]
    z = x @ p["w_ih"] + p["b_ih"] + h @ p["w_hh"] + p["b_hh"]
    i, f, g, o = (z[..., k * n : (k + 1) * n] for k in range(4))
    c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
    h = sigmoid(o) * np.tanh(c)
    return (h, c), h


def gru(p, h, x):
    n = h.shape[-1]
    gi = x @ p["w_ih"] + p["b_ih"]
    gh = h @ p["w_hh"] + p["b_hh"]
    r = sigmoid(gi[..., :n] + gh[..., :n])
    z = sigmoid(gi[..., n : 2 * n] + gh[..., n : 2 * n])
    cand = np.tanh(gi[..., 2 * n :] + r * gh[..., 2 * n :])
    h = (1 - z) * cand + z * h
    return h, h


def lru(p, h, x):
    lam = np.exp(-np.exp(p["nu_log"]) + 1j * np.exp(p["theta_log"]))
    b = p["b_re"] + 1j * p["b_im"]
    c = p["c_re"] + 1j * p["c_im"]
    h = lam * h + np.exp(p["gamma_log"]) * (x @ b)
    y = np.real(h @ c) + x @ p["d"]
    return h, y


def mingru(p, h, x):
    n = h.shape[-1]
    g = x @ p["w_ih"] + p["b_ih"]
    z = sigmoid(g[..., :n])
    h = (1 - z) * h + z * g[..., n:]
    return h, h


def equilibrium(p, h, x, activation="tanh", iters=500):
    """z = f(x W_ih + b + h W_hh + z W_zz) by plain iteration, many more steps than needed."""
    drive = x @ p["w_ih"] + p["b"] + h @ p["w_hh"]
    z = h
    for _ in range(iters):
        z = ACT[activation](drive + z @ p["w_zz"])
    return z, z
