"""Output heads: the last layer of a classifier, from features to a distribution over classes.

Every head maps features ``[B, in_features]`` to ``num_classes`` classes and offers the same
four operations (see :class:`OutputHead`): normalised ``log_probs``, a per-example training
``loss``, the exact ``nll`` of a target and a ``predict``-ed class. A classifier built on a head
trains on ``head.loss(features, targets).mean()`` and evaluates with ``head.nll`` /
``head.predict``; ``head(features)`` is ``head.log_probs(features)``, so a head can also be the
last module of an ``nn.Sequential``.

The variants (:data:`HEADS`, built by :func:`make_head`):

* ``softmax``: one linear layer and cross-entropy, the baseline.
* ``gumbel``: the same logits, trained through annealed Gumbel-softmax samples
  (Jang et al. 2017; Maddison et al. 2017): :class:`GumbelSoftmaxHead`.
* ``hierarchical``: a hierarchical softmax over a Huffman tree of the class frequencies
  (Morin & Bengio 2005; Mikolov et al. 2013): training costs O(log C) per example instead of
  O(C): :class:`HierarchicalSoftmaxHead`.
* ``adaptive``: torch's adaptive softmax (Grave et al. 2017), which spends full-width
  capacity on frequent classes only: :class:`AdaptiveSoftmaxHead`.

References:
    Jang, Gu & Poole (2017), "Categorical Reparameterization with Gumbel-Softmax", ICLR.
    Maddison, Mnih & Teh (2017), "The Concrete Distribution", ICLR.
    Morin & Bengio (2005), "Hierarchical Probabilistic Neural Network Language Model", AISTATS.
    Mikolov, Sutskever, Chen, Corrado & Dean (2013), "Distributed Representations of Words and
    Phrases and their Compositionality", NeurIPS.
    Grave, Joulin, Cissé, Grangier & Jégou (2017), "Efficient softmax approximation for GPUs",
    ICML.
"""

from __future__ import annotations

import heapq
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from toolkit.errors import ToolkitError, did_you_mean

__all__ = [
    "HEADS",
    "AdaptiveSoftmaxHead",
    "GumbelSoftmaxHead",
    "HierarchicalSoftmaxHead",
    "HuffmanTree",
    "OutputHead",
    "SoftmaxHead",
    "adaptive_cutoffs",
    "huffman_tree",
    "make_head",
]

HEADS: tuple[str, ...] = ("softmax", "gumbel", "hierarchical", "adaptive")


class OutputHead(nn.Module, ABC):
    """Abstract output layer of a classifier: features ``[B, in_features]`` -> ``num_classes`` classes.

    Subclasses implement :meth:`log_probs` and :meth:`loss`; :meth:`nll` and :meth:`predict`
    default to reading :meth:`log_probs` and are overridden where a cheaper exact path exists.
    Targets are always the caller's original class labels (int64 in ``[0, num_classes)``), even
    for heads that reorder classes internally.
    """

    num_classes: int
    in_features: int

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.num_classes = num_classes

    def forward(self, features: Tensor) -> Tensor:
        """``[B, C]`` log-probabilities, the same as :meth:`log_probs` (so a head can end an
        ``nn.Sequential``; train with :meth:`loss`, not with ``F.nll_loss`` of this output, since
        some heads' training losses are not the exact NLL, and some are much cheaper)."""
        return self.log_probs(features)

    @abstractmethod
    def log_probs(self, features: Tensor) -> Tensor:
        """``[B, C]`` normalised log-probabilities: ``exp(row).sum() == 1`` for every row."""

    @abstractmethod
    def loss(self, features: Tensor, targets: Tensor) -> Tensor:
        """``[B]`` per-example training loss; the caller backpropagates its ``.mean()``."""

    def nll(self, features: Tensor, targets: Tensor) -> Tensor:
        """``[B]`` exact ``-log p(target | x)`` in nats, deterministic (no sampling)."""
        return -self.log_probs(features).gather(1, targets.long().unsqueeze(1)).squeeze(1)

    def predict(self, features: Tensor) -> Tensor:
        """``[B]`` int64 most probable class under :meth:`log_probs`."""
        return self.log_probs(features).argmax(1)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_classes={self.num_classes}"


class SoftmaxHead(OutputHead):
    """The baseline: ``p(c | x) = softmax(W h + b)_c``, trained with cross-entropy.

    Costs O(C * in_features) per example in training and evaluation alike.
    """

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__(in_features, num_classes)
        self.linear = nn.Linear(in_features, num_classes)

    def log_probs(self, features: Tensor) -> Tensor:
        """``log_softmax`` of the logits."""
        return F.log_softmax(self.linear(features), dim=1)

    def loss(self, features: Tensor, targets: Tensor) -> Tensor:
        """Cross-entropy, the exact NLL (fused ``log_softmax`` + gather)."""
        return F.cross_entropy(self.linear(features), targets.long(), reduction="none")

    def nll(self, features: Tensor, targets: Tensor) -> Tensor:
        """Exact NLL: the same as :meth:`loss`."""
        return F.cross_entropy(self.linear(features), targets.long(), reduction="none")

    def predict(self, features: Tensor) -> Tensor:
        """Argmax of the logits (the softmax does not change it, so it is skipped)."""
        return self.linear(features).argmax(1)


def _gumbel_noise(like: Tensor) -> Tensor:
    """I.i.d. Gumbel(0, 1) noise shaped like ``like``, by inverting its CDF: ``-log(-log U)``.

    ``rand`` draws from [0, 1): clamping away U = 0 keeps ``-log U`` finite, and U < 1 keeps it
    positive. (``-log`` of an ``exponential_`` draw is the same law, but ``exponential_`` is
    several times slower than ``rand`` on CPU.)
    """
    # In place: at [256, 50,000] each fresh tensor is a 51 MB allocation (and its page faults).
    uniform = torch.rand_like(like).clamp_(min=torch.finfo(like.dtype).tiny)
    return uniform.log_().neg_().log_().neg_()


class GumbelSoftmaxHead(OutputHead):
    """Logits trained through annealed Gumbel-softmax samples (Jang et al. 2017; Maddison et al. 2017).

    A relaxed sample is ``y = softmax((logits + g) / tau)`` with ``g`` i.i.d. Gumbel(0, 1). The
    temperature anneals with the number ``t`` of training :meth:`loss` calls so far,
    ``tau = max(tau_min, tau0 * exp(-anneal_rate * t))`` (Jang et al.'s schedule). ``t`` is the
    persistent buffer ``steps``, so it is in ``state_dict()`` and a resumed run continues the
    schedule; it advances only in training mode.

    Training loss: ``-log y[target]`` of the *soft* sample (computed as a ``log_softmax``, so
    it is finite), whether or not ``straight_through`` is set. Why not a loss on the
    straight-through sample: its forward value is the hard one-hot, and every loss of a one-hot
    is either useless or harmful here: ``-log onehot[target]`` is 0 or infinity, and the 0/1
    error ``1 - onehot[target]`` has the straight-through gradient ``-d y_soft[target]``, which
    is proportional to ``y_soft[target] * (1 - y_soft[target])`` and so vanishes precisely on
    the confident mistakes that most need correcting. The straight-through estimator pays off
    when a discrete sample feeds further computation (a decoder, an environment); at an output
    layer nothing but the loss consumes it. So ``straight_through`` decides only what
    :meth:`sample` returns (the hard one-hot with the soft sample's gradient, for callers that
    need a discrete choice), and the loss is the relaxed NLL, whose value tracks the true NLL
    and whose gradient is the soft sample's.

    In evaluation mode (``not self.training``) :meth:`loss` returns :meth:`nll`, so validation
    losses are deterministic and comparable with the other heads'.
    """

    steps: Tensor

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        *,
        tau0: float = 1.0,
        tau_min: float = 0.5,
        anneal_rate: float = 1e-4,
        straight_through: bool = True,
    ) -> None:
        super().__init__(in_features, num_classes)
        self.linear = nn.Linear(in_features, num_classes)
        self.tau0 = float(tau0)
        self.tau_min = float(tau_min)
        self.anneal_rate = float(anneal_rate)
        self.straight_through = bool(straight_through)
        # An integer buffer: module.to(dtype) leaves it exact, and it is saved with the weights.
        self.register_buffer("steps", torch.zeros((), dtype=torch.long), persistent=True)

    def temperature(self, steps: int | None = None) -> float:
        """``max(tau_min, tau0 * exp(-anneal_rate * steps))``; ``steps`` defaults to the buffer."""
        t = int(self.steps.item()) if steps is None else int(steps)
        return max(self.tau_min, self.tau0 * math.exp(-self.anneal_rate * t))

    @property
    def tau(self) -> float:
        """The temperature the next training :meth:`loss` call will use."""
        return self.temperature()

    def _tau_tensor(self, like: Tensor) -> Tensor:
        # The schedule on the device, from the buffer, so a training step needs no host sync.
        t = self.steps.to(like.dtype)
        return (torch.exp(-self.anneal_rate * t) * self.tau0).clamp(min=self.tau_min)

    def log_probs(self, features: Tensor) -> Tensor:
        """``log_softmax(logits)``: temperature 1 and no noise.

        The Gumbel-max trick makes ``argmax(logits + g)`` distributed exactly as
        ``Categorical(softmax(logits))``; the temperature only shapes the continuous relaxation
        of that categorical and tends to it as ``tau -> 0``. So the distribution the head
        models, and the one to evaluate, is ``softmax(logits)`` itself.
        """
        return F.log_softmax(self.linear(features), dim=1)

    def nll(self, features: Tensor, targets: Tensor) -> Tensor:
        """Exact NLL under ``softmax(logits)`` (see :meth:`log_probs`)."""
        return F.cross_entropy(self.linear(features), targets.long(), reduction="none")

    def predict(self, features: Tensor) -> Tensor:
        """Argmax of the logits, the mode of ``softmax(logits)``."""
        return self.linear(features).argmax(1)

    def sample(self, features: Tensor) -> Tensor:
        """``[B, C]`` one relaxed sample at the current temperature.

        With ``straight_through`` it is the hard one-hot of the sample's argmax carrying the
        soft sample's gradient; without, the soft sample. Does not advance the schedule.
        """
        logits = self.linear(features)
        soft = torch.softmax((logits + _gumbel_noise(logits)) / self._tau_tensor(logits), dim=1)
        if not self.straight_through:
            return soft
        hard = torch.zeros_like(soft).scatter_(1, soft.argmax(1, keepdim=True), 1.0)
        # soft - soft.detach() is exactly 0 in value: the forward is exactly one-hot.
        return hard + (soft - soft.detach())

    def loss(self, features: Tensor, targets: Tensor) -> Tensor:
        """Training: ``-log softmax((logits + g) / tau)[target]`` (see the class docstring for
        why it is the soft sample's), then the schedule advances. Evaluation: :meth:`nll`."""
        if not self.training:
            return self.nll(features, targets)
        logits = self.linear(features)
        tau = self._tau_tensor(logits)
        # (logits + g) / tau, accumulated into the noise tensor in place (fewer big allocations;
        # autograd allows it, the noise being no leaf that requires grad).
        log_soft = F.log_softmax(_gumbel_noise(logits).add_(logits).div_(tau), dim=1)
        with torch.no_grad():
            self.steps += 1
        return -log_soft.gather(1, targets.long().unsqueeze(1)).squeeze(1)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, tau0={self.tau0}, tau_min={self.tau_min}, "
            f"anneal_rate={self.anneal_rate}, straight_through={self.straight_through}"
        )


@dataclass(frozen=True)
class HuffmanTree:
    """A binary tree with one leaf per class, built by :func:`huffman_tree`.

    Internal nodes are numbered ``0 .. C-2`` breadth first from the root (node 0). ``left[n]`` and
    ``right[n]`` are node ``n``'s children, encoded as ``k >= 0`` for internal node ``k`` and
    ``-(c + 1)`` for the leaf of class ``c``. ``paths[c]`` lists the ``(node, sign)`` steps from
    the root to class ``c``'s leaf: sign ``+1`` goes left, ``-1`` right.
    """

    left: tuple[int, ...]
    right: tuple[int, ...]
    paths: tuple[tuple[tuple[int, int], ...], ...]

    @property
    def depths(self) -> list[int]:
        """Path length of every class (the number of binary decisions that reach it)."""
        return [len(path) for path in self.paths]


def huffman_tree(counts: Sequence[float]) -> HuffmanTree:
    """The Huffman tree of ``counts`` (Huffman 1952), as Mikolov et al. (2013) use it for word2vec.

    Frequent classes get short paths, so the expected path length (the training cost of a
    hierarchical softmax) is minimal for the data's class frequencies. Ties are broken by
    creation order (classes in index order, then merged nodes in the order they were made), so
    the tree is deterministic. With equal counts the tree is balanced: every depth is
    ``floor(log2 C)`` or ``ceil(log2 C)``, since any optimal tree for equal weights is (moving
    two deepest siblings under a leaf two or more levels shallower would shorten the total).
    """
    n = len(counts)
    if n < 2:
        raise ToolkitError(f"A Huffman tree needs at least 2 classes, got {n}.")
    # Heap of (weight, node id). Leaves are ids 0..n-1; merged node number j (0-based) gets id
    # n + j, so the id is the creation order and breaks ties deterministically.
    heap: list[tuple[float, int]] = [(float(w), i) for i, w in enumerate(counts)]
    heapq.heapify(heap)
    children: list[tuple[int, int]] = []
    while len(heap) > 1:
        w_a, a = heapq.heappop(heap)
        w_b, b = heapq.heappop(heap)
        children.append((a, b))
        heapq.heappush(heap, (w_a + w_b, n + len(children) - 1))
    root = heap[0][1]

    # Renumber internal nodes breadth first from the root, so the root is node 0 and nodes of
    # one depth are contiguous; record each class's path on the way.
    number = {root: 0}
    left: list[int] = []
    right: list[int] = []
    paths: list[tuple[tuple[int, int], ...]] = [()] * n
    queue = [(root, ())]
    head = 0
    while head < len(queue):
        node, path = queue[head]
        head += 1
        encoded = []
        for child, sign in zip(children[node - n], (1, -1)):
            step = (*path, (number[node], sign))
            if child < n:
                paths[child] = step
                encoded.append(-(child + 1))
            else:
                number[child] = len(number)
                encoded.append(number[child])
                queue.append((child, step))
        left.append(encoded[0])
        right.append(encoded[1])
    return HuffmanTree(tuple(left), tuple(right), tuple(paths))


class HierarchicalSoftmaxHead(OutputHead):
    """Hierarchical softmax over a Huffman tree of the class frequencies (Morin & Bengio 2005;
    Mikolov et al. 2013).

    Each internal node ``n`` of the tree (:func:`huffman_tree`) is a binary logistic decision,
    and a class's probability is the product of the decisions on its root-to-leaf path:
    ``log p(c | x) = sum_{(n, s) in path(c)} logsigmoid(s * (w_n . h + b_n))``. The two branches
    of a node sum to one, so the leaves form a normalised distribution with no sum over classes.

    All ``C - 1`` node weights are the rows of one ``nn.Linear(in_features, C - 1)``, ``linear``.
    :meth:`loss` and :meth:`nll` gather only the rows on each target's path: O(depth *
    in_features) per example, depth ~ the class's code length (``-log2`` of its frequency, or
    ``log2 C`` for uniform counts), instead of O(C * in_features) for a softmax. :meth:`log_probs`
    needs every class; it walks the tree top-down one depth at a time, O(B * C) time and memory
    and never a ``[B, C, depth]`` tensor, so it works for C = 50,000 (but costs a few times a
    softmax's ``log_probs``: prefer :meth:`nll` where only the target's probability is needed).

    Class counts of 0 are allowed (never-seen classes sit deep in the tree). With counts of
    whole examples the deepest path is bounded by about ``1.44 log2(total count) + log2(C)``
    (Huffman code lengths grow at most like ``log_phi`` of the inverse frequency).

    The tree is stored in the persistent buffers ``path_nodes`` (``[C, D]`` node of each step,
    0 past the end) and ``path_signs`` (``[C, D]``, +-1 per step, 0 past the end), ``D`` the
    deepest path: a checkpoint carries the tree its weights belong to.
    """

    path_nodes: Tensor
    path_signs: Tensor
    node_edge: Tensor
    leaf_edge: Tensor
    leaf_parent: Tensor

    def __init__(self, in_features: int, num_classes: int, class_counts: Sequence[float] | None = None) -> None:
        super().__init__(in_features, num_classes)
        counts = [1.0] * num_classes if class_counts is None else [float(c) for c in class_counts]
        tree = huffman_tree(counts)
        depth = max(tree.depths)
        # Padded to the deepest path with node 0 / sign 0; built as lists, then one tensor each.
        nodes = [[node for node, _ in path] + [0] * (depth - len(path)) for path in tree.paths]
        signs = [[float(sign) for _, sign in path] + [0.0] * (depth - len(path)) for path in tree.paths]
        self.register_buffer("path_nodes", torch.tensor(nodes, dtype=torch.long), persistent=True)
        self.register_buffer("path_signs", torch.tensor(signs), persistent=True)
        self.linear = nn.Linear(in_features, num_classes - 1)
        self.depth_starts: list[int] = []
        self._index_tree()
        self.register_load_state_dict_post_hook(HierarchicalSoftmaxHead._after_load)

    @staticmethod
    def _path_log_prob(scores: Tensor, signs: Tensor) -> Tensor:
        # logsigmoid(0) = -log 2, not 0, so padded steps (sign 0) are masked out explicitly.
        return (F.logsigmoid(scores * signs) * (signs != 0)).sum(-1)

    def nll(self, features: Tensor, targets: Tensor) -> Tensor:
        """Exact ``-log p(target | x)`` from the target's path only: O(depth) rows per example."""
        targets = targets.long()
        nodes = self.path_nodes[targets]  # [B, D]
        signs = self.path_signs[targets].to(features.dtype)
        flat = nodes.reshape(-1)
        # [B, D, F]: only the path's rows. index_select (backward: one index_add_) and a
        # broadcast multiply-sum measured 3x faster on CPU than F.embedding + bmm of [D, F]x[F, 1].
        weights = self.linear.weight.index_select(0, flat).view(*nodes.shape, -1)
        bias = self.linear.bias.index_select(0, flat).view(nodes.shape)
        scores = (weights * features.unsqueeze(1)).sum(-1) + bias
        return -self._path_log_prob(scores, signs)

    def loss(self, features: Tensor, targets: Tensor) -> Tensor:
        """The exact NLL (:meth:`nll`): a hierarchical softmax is trained by maximum likelihood."""
        return self.nll(features, targets)

    def _index_tree(self) -> None:
        """Derive the tree's edges from the path buffers, for :meth:`log_probs`.

        Run at construction and after every ``load_state_dict`` (a checkpoint may carry another
        tree); the results are non-persistent buffers, so they follow ``.to(device)``. An edge
        is ``node`` (left branch) or ``node + C - 1`` (right branch). Kept: each non-root
        internal node's incoming edge (``node_edge``, in node order from node 1), each class's
        incoming edge and parent node (``leaf_edge``, ``leaf_parent``), and where each depth's
        nodes start (``depth_starts``: breadth-first numbering makes each depth a contiguous
        range of node indices).
        """
        nodes, signs = self.path_nodes, self.path_signs
        inner_count = self.num_classes - 1
        valid = signs != 0
        edges = nodes + (signs < 0).long() * inner_count  # [C, D]
        last = (valid.sum(1) - 1).unsqueeze(1)  # index of each class's final step
        # Step k >= 1 of a path enters node nodes[c, k] through edge edges[c, k - 1], at depth k.
        inner = valid[:, 1:]
        node_edge = torch.full((inner_count,), -1, dtype=torch.long, device=nodes.device)
        node_depth = torch.zeros(inner_count, dtype=torch.long, device=nodes.device)
        steps = torch.arange(1, nodes.shape[1], device=nodes.device).expand_as(inner)
        node_edge[nodes[:, 1:][inner]] = edges[:, :-1][inner]
        node_depth[nodes[:, 1:][inner]] = steps[inner]
        self.depth_starts = [0, *torch.bincount(node_depth).cumsum(0).tolist()]
        self.register_buffer("node_edge", node_edge, persistent=False)
        self.register_buffer("leaf_edge", edges.gather(1, last).squeeze(1), persistent=False)
        self.register_buffer("leaf_parent", nodes.gather(1, last).squeeze(1), persistent=False)

    @staticmethod
    def _after_load(module: nn.Module, incompatible_keys: object) -> None:
        module._index_tree()  # type: ignore[operator]

    # Examples per log_probs chunk: each [C, chunk] temporary holds at most this many elements
    # (16 MiB of float32). It bounds the working memory for any B and C, and keeps those
    # temporaries below glibc's 32 MiB mmap threshold, so they are reused from the heap instead
    # of being mapped (and page-faulted) afresh: measured ~2x faster at C = 50,000 on CPU.
    chunk_elements: int = 1 << 22

    def log_probs(self, features: Tensor) -> Tensor:
        """``[B, C]`` log-probabilities of every class, top-down over the tree in O(B * C).

        Summing each class's path separately would cost O(B * C * depth) and materialise a
        ``[B, C, depth]`` gather (1 GB at B = 512, C = 50,000). Instead the log-probability of
        reaching each internal node is computed once per depth from its parent's, and each
        leaf adds its last edge. The batch is processed in chunks of examples
        (:attr:`chunk_elements`), so the largest temporaries are ``[2 (C - 1), chunk]`` edge
        values whatever the batch size.
        """
        chunk = max(1, self.chunk_elements // self.num_classes)
        # Each chunk is node-major [C, b]; cat of the transposed chunks is the single copy that
        # lays the result out as [B, C].
        return torch.cat([self._leaf_log_probs(part).t() for part in features.split(chunk)], dim=0)

    def _leaf_log_probs(self, features: Tensor) -> Tensor:
        """``[C, b]`` leaf log-probabilities, node-major: every gather copies whole contiguous
        rows, several times faster on CPU than gathering columns of ``[b, C]``."""
        # [C-1, b]: every node's decision for every example, as one matrix product.
        scores = torch.addmm(self.linear.bias.unsqueeze(1), self.linear.weight, features.t())
        left = F.logsigmoid(scores)
        # Edge values: all left branches, then all right ones; logsigmoid(-s) = logsigmoid(s) - s
        # saves a second logsigmoid pass (its rounding error is an ulp of |s|, negligible).
        edge_logp = torch.cat([left, left - scores], dim=0)  # [2 (C - 1), b]
        starts, inner_count = self.depth_starts, self.num_classes - 1
        levels = [scores.new_zeros(1, scores.shape[1])]  # log P(reach the root) = 0
        for depth in range(1, len(starts) - 1):
            incoming = self.node_edge[starts[depth] : starts[depth + 1]]
            parents = incoming % inner_count - starts[depth - 1]  # index within the previous depth
            levels.append(levels[-1].index_select(0, parents) + edge_logp.index_select(0, incoming))
        reach = torch.cat(levels, dim=0)  # [C-1, b], node order
        return reach.index_select(0, self.leaf_parent) + edge_logp.index_select(0, self.leaf_edge)


def adaptive_cutoffs(sorted_counts: Sequence[float], coverage: Sequence[float] = (0.8, 0.95)) -> list[int]:
    """Cut-offs for :class:`nn.AdaptiveLogSoftmaxWithLoss` from class counts in decreasing order.

    The head's shortlist is the fewest most frequent classes that cover ``coverage[0]`` (80%)
    of the examples, the first tail cluster reaches ``coverage[1]`` (95%), and the second tail
    cluster holds the rest, following Grave et al. (2017), whose head serves most examples at
    full width while rare classes share narrow projections. Fewer than 20 classes get one cut
    (head + a single tail cluster): splitting a handful of classes further saves nothing.
    Cut-offs are clipped to ``[1, C-1]`` and duplicates dropped, as the module requires.
    """
    n = len(sorted_counts)
    counts = torch.as_tensor([float(c) for c in sorted_counts], dtype=torch.float64)
    total = float(counts.sum())
    share = counts / total if total > 0 else torch.full((n,), 1.0 / n, dtype=torch.float64)
    cumulative = share.cumsum(0)
    cuts: list[int] = []
    for q in coverage[:1] if n < 20 else coverage:
        # The number of classes needed to reach q (a small tolerance absorbs rounding in cumsum).
        k = int(torch.searchsorted(cumulative, torch.tensor([q - 1e-9], dtype=torch.float64)).item()) + 1
        k = min(max(k, 1), n - 1)
        if not cuts or k > cuts[-1]:
            cuts.append(k)
    return cuts


class AdaptiveSoftmaxHead(OutputHead):
    """Adaptive softmax (Grave et al. 2017) via torch's ``nn.AdaptiveLogSoftmaxWithLoss``.

    Classes sorted by decreasing frequency are split by the cut-offs into a head shortlist,
    scored at full width with one extra logit per tail cluster, and tail clusters, each scored
    through a projection narrowed by ``div_value`` per cluster. An example costs the head plus
    only its target's cluster in training, so frequent classes are cheap and rare ones share
    small layers. The module is held as ``adaptive`` (with a bias on its head, so it can learn
    the class prior, as the softmax head's bias does).

    The module assumes class 0 is the most frequent, so classes are re-indexed by decreasing
    count (a stable sort: ties keep label order). The persistent buffers ``order`` (rank ->
    original label) and ``rank`` (original label -> rank) translate, so callers use their own
    labels everywhere. ``cutoffs``, when given, count classes in that decreasing-frequency
    order, as torch's do; by default they come from :func:`adaptive_cutoffs`.
    """

    order: Tensor
    rank: Tensor

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        class_counts: Sequence[float] | None = None,
        cutoffs: Sequence[int] | None = None,
        div_value: float = 4.0,
    ) -> None:
        super().__init__(in_features, num_classes)
        counts = torch.ones(num_classes, dtype=torch.float64)
        if class_counts is not None:
            counts = torch.as_tensor([float(c) for c in class_counts], dtype=torch.float64)
        order = torch.argsort(-counts, stable=True)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(num_classes)
        self.register_buffer("order", order, persistent=True)
        self.register_buffer("rank", rank, persistent=True)
        if cutoffs is None:
            cuts = adaptive_cutoffs(counts[order].tolist())
            # Tail cluster i projects to in_features // div_value^(i+1) dimensions; drop the
            # clusters that would get none (a zero-width layer carries no information).
            while len(cuts) > 1 and int(in_features // div_value ** len(cuts)) < 1:
                cuts.pop()
        else:
            cuts = [int(c) for c in cutoffs]
        _check_cutoffs(cuts, in_features, num_classes, div_value)
        self.cutoffs = cuts
        self.adaptive = nn.AdaptiveLogSoftmaxWithLoss(
            in_features, num_classes, cuts, div_value=div_value, head_bias=True
        )

    def log_probs(self, features: Tensor) -> Tensor:
        """``[B, C]`` full distribution from the module's ``log_prob``, back in label order."""
        return self.adaptive.log_prob(features).index_select(1, self.rank)

    def nll(self, features: Tensor, targets: Tensor) -> Tensor:
        """Exact NLL from the module's forward: the head plus the target's cluster only."""
        output = self.adaptive(features, self.rank[targets.long()]).output
        return -output.reshape(-1)  # the module squeezes a batch of one to a scalar

    def loss(self, features: Tensor, targets: Tensor) -> Tensor:
        """The exact NLL (:meth:`nll`): the adaptive softmax is trained by maximum likelihood."""
        return self.nll(features, targets)

    def predict(self, features: Tensor) -> Tensor:
        """The module's exact argmax (it skips tail clusters when the head's best is a
        shortlist class), translated back to labels."""
        return self.order[self.adaptive.predict(features)]


def _check_cutoffs(cuts: Sequence[int], in_features: int, num_classes: int, div_value: float) -> None:
    """Refuse cut-offs the adaptive softmax cannot use, with one sentence."""
    if not cuts or list(cuts) != sorted(set(cuts)) or cuts[0] < 1 or cuts[-1] > num_classes - 1:
        raise ToolkitError(
            f"Adaptive softmax cutoffs must be strictly increasing integers between 1 and "
            f"{num_classes - 1} (num_classes - 1), got {list(cuts)}."
        )
    if div_value <= 0:
        raise ToolkitError(f"Adaptive softmax div_value must be positive, got {div_value}.")
    if int(in_features // div_value ** len(cuts)) < 1:
        raise ToolkitError(
            f"Adaptive softmax with {len(cuts)} tail cluster(s) and div_value {div_value} leaves the last "
            f"cluster no projection dimensions at in_features {in_features}; use fewer cutoffs or a smaller div_value."
        )


def make_head(
    kind: str,
    in_features: int,
    num_classes: int,
    class_counts: Sequence[int] | None = None,
    *,
    tau0: float = 1.0,
    tau_min: float = 0.5,
    anneal_rate: float = 1e-4,
    straight_through: bool = True,
    cutoffs: Sequence[int] | None = None,
    div_value: float = 4.0,
) -> OutputHead:
    """Build the output head ``kind`` (one of :data:`HEADS`) for ``num_classes`` classes.

    ``class_counts`` are training examples per class (``None``: uniform); the hierarchical head
    builds its Huffman tree from them and the adaptive head its class order and cut-offs; the
    softmax and gumbel heads ignore them. ``tau0``, ``tau_min``, ``anneal_rate`` and
    ``straight_through`` configure ``gumbel`` (:class:`GumbelSoftmaxHead`); ``cutoffs`` and
    ``div_value`` configure ``adaptive`` (:class:`AdaptiveSoftmaxHead`). Raises
    :class:`ToolkitError` for an unknown kind or invalid sizes, counts or settings.
    """
    if kind not in HEADS:
        raise ToolkitError(
            f"Unknown output head '{kind}'; choose one of {', '.join(HEADS)}.{did_you_mean(kind, HEADS)}"
        )
    if int(in_features) < 1:
        raise ToolkitError(f"An output head needs in_features >= 1, got {in_features}.")
    if int(num_classes) < 2:
        # One class has nothing to predict; the tree and cut-off heads cannot even be built.
        raise ToolkitError(f"An output head needs at least 2 classes, got num_classes={num_classes}.")
    if class_counts is not None:
        counts = [float(c) for c in class_counts]
        if len(counts) != num_classes:
            raise ToolkitError(
                f"class_counts has {len(counts)} entries but num_classes is {num_classes}; give one count per class."
            )
        if any(not math.isfinite(c) or c < 0 for c in counts):
            raise ToolkitError("class_counts must be finite non-negative numbers of training examples per class.")
        class_counts = counts
    if kind == "softmax":
        return SoftmaxHead(in_features, num_classes)
    if kind == "gumbel":
        if tau0 <= 0 or tau_min <= 0 or anneal_rate < 0:
            raise ToolkitError(
                f"Gumbel head needs tau0 > 0, tau_min > 0 and anneal_rate >= 0, got {tau0}, {tau_min}, {anneal_rate}."
            )
        return GumbelSoftmaxHead(
            in_features,
            num_classes,
            tau0=tau0,
            tau_min=tau_min,
            anneal_rate=anneal_rate,
            straight_through=straight_through,
        )
    if kind == "hierarchical":
        return HierarchicalSoftmaxHead(in_features, num_classes, class_counts)
    return AdaptiveSoftmaxHead(in_features, num_classes, class_counts, cutoffs=cutoffs, div_value=div_value)
