"""Independent, straightforward implementations of every loss formula of dkl-core (KL, DKL, IKL, GKL, DKD, class prior).

Deliberately naive: the pairwise ``B x C x C`` form of the weighted MSE, probabilities and logs taken
literally. dkl-core must match these in float64, values and gradients.
"""

import torch


def softmax(x, temperature=1.0):
    e = torch.exp(x / temperature - (x / temperature).max(dim=1, keepdim=True).values)
    return e / e.sum(dim=1, keepdim=True)


def pairwise_wmse(s, t, w):
    """1/4 sum_{j,k} w_j w_k ((t_j - t_k) - (s_j - s_k))^2, per sample."""
    dt = t[:, :, None] - t[:, None, :]
    ds = s[:, :, None] - s[:, None, :]
    ww = w[:, :, None] * w[:, None, :]
    return 0.25 * (ww * (dt - ds) ** 2).sum(dim=(1, 2))


def soft_ce(s, t, temperature=1.0):
    """- sum_j S(softmax(t/T))_j log softmax(s/T)_j, per sample (no T^2)."""
    return -(softmax(t, temperature).detach() * torch.log(softmax(s, temperature))).sum(dim=1)


def kl(s, t, temperature=1.0):
    """T^2 KL(softmax(t/T) || softmax(s/T)), per sample."""
    p, q = softmax(t, temperature), softmax(s, temperature)
    return temperature**2 * (p * (torch.log(p) - torch.log(q))).sum(dim=1)


def dkl(s, t, mse_weight=1.0, ce_weight=1.0, temperature=1.0):
    s, t = s / temperature, t / temperature
    w = softmax(t).detach()
    return mse_weight * pairwise_wmse(s.detach(), t, w) + ce_weight * soft_ce(s, t)


def ikl_weights(t, weights, weight_temperature, detach_weights):
    w = softmax(t, weight_temperature) if weights is None else weights
    return w.detach() if detach_weights else w


def ikl(
    s, t, mse_weight=1.0, ce_weight=1.0, temperature=1.0, weights=None, weight_temperature=1.0, detach_weights=True
):
    w = ikl_weights(t, weights, weight_temperature, detach_weights)
    return mse_weight * pairwise_wmse(s, t, w) + ce_weight * soft_ce(s, t, temperature)


def gkl_mean(s, t, mse_weight=1.0, ce_weight=1.0, temperature=1.0, weights=None, weight_temperature=1.0,
             detach_weights=True, gamma=1.0):  # fmt: skip
    """The TPAMI code's batch loss: mse_weight * sum_b wMSE_b / sum_b W_b^2 + ce_weight * mean_b sCE_b."""
    w = ikl_weights(t, weights, weight_temperature, detach_weights) ** gamma
    mass = w.sum(dim=1)
    return mse_weight * pairwise_wmse(s, t, w).sum() / (mass**2).sum() + ce_weight * soft_ce(s, t, temperature).mean()


def dkd(s, t, y, tckd_weight=1.0, nckd_weight=8.0, temperature=4.0):
    """Zhao et al. 2022, written literally: binary target/non-target KL plus KL over the other classes."""
    per_sample = []
    for b in range(s.shape[0]):
        ps, pt = softmax(s[b : b + 1], temperature)[0], softmax(t[b : b + 1], temperature)[0]
        bs = torch.stack([ps[y[b]], 1 - ps[y[b]]])
        bt = torch.stack([pt[y[b]], 1 - pt[y[b]]])
        tckd = (bt * (torch.log(bt) - torch.log(bs))).sum()
        keep = [c for c in range(s.shape[1]) if c != int(y[b])]
        qs, qt = softmax(s[b : b + 1, keep], temperature)[0], softmax(t[b : b + 1, keep], temperature)[0]
        nckd = (qt * (torch.log(qt) - torch.log(qs))).sum()
        per_sample.append(temperature**2 * (tckd_weight * tckd + nckd_weight * nckd))
    return torch.stack(per_sample)


def class_prior(batches, num_classes, temperature=1.0):
    """Row-normalised per-label sums of softmax(logits/T); uniform rows for unseen labels."""
    sums = torch.zeros(num_classes, num_classes, dtype=torch.float64)
    for logits, targets in batches:
        probs = softmax(logits.double(), temperature)
        for row, label in zip(probs, targets):
            sums[int(label)] += row
    out = torch.full_like(sums, 1.0 / num_classes)
    for c in range(num_classes):
        if sums[c].sum() > 0:
            out[c] = sums[c] / sums[c].sum()
    return out


def window_mean(x, size):
    """Adaptive average pooling to ``size x size`` written out: window i covers [floor(i*H/l), ceil((i+1)*H/l))."""
    n, c, h, w = x.shape
    out = x.new_empty(n, c, size, size)
    for i in range(size):
        top, bottom = (i * h) // size, -((-(i + 1) * h) // size)
        for j in range(size):
            left, right = (j * w) // size, -((-(j + 1) * w) // size)
            out[:, :, i, j] = x[:, :, top:bottom, left:right].mean(dim=(2, 3))
    return out


def hcl(student_features, teacher_features):
    """ReviewKD's HCL taken literally: per pair, (MSE + 1/2 MSE_4x4 + 1/4 MSE_2x2 + 1/8 MSE_1x1) / (sum of the
    weights used), where a level only counts when it is smaller than the map's height; summed over pairs."""
    total = 0.0
    for fs, ft in zip(student_features, teacher_features):
        terms = [(1.0, ((fs - ft) ** 2).mean())]
        weight = 1.0
        for level in (4, 2, 1):
            if level < fs.shape[2]:
                weight = weight / 2
                terms.append((weight, ((window_mean(fs, level) - window_mean(ft, level)) ** 2).mean()))
        total = total + sum(w * value for w, value in terms) / sum(w for w, _ in terms)
    return total
