"""The state a feedback layer owns for its rule, and the B it uses now.

A persistent buffer for fa, kp and wm (``feedback_weight``: kp and wm learn it, see
:mod:`sslr.feedback.learning`) and frsf (``feedback_magnitude``); wm's mirror counter
(``feedback_mirrors``); for brsf the seed and the draw counter (``feedback_seed``,
``feedback_draws``), so a state_dict round trip reproduces B. Feedback tensors are buffers or tensors derived in the backward pass,
never Parameters (Lightning's BaseFinetuning sets requires_grad on every Parameter).
"""

from __future__ import annotations

import zlib

import torch
from torch import Tensor

from .functional import Draw, Feedback
from .rules import FeedbackRule, Scale, get_rule, get_scale
from .seeding import (
    FIXED,
    RESAMPLE,
    TRAIN,
    cpu_generator,
    derive_seed,
    hashed_uniform_like,
    random_seed,
    uniform_like,
)

_SEED, _DRAWS = "feedback_seed", "feedback_draws"
_MIRRORS = "feedback_mirrors"  # wm: mirror steps taken (the noise's seed)


class FeedbackLayer:
    """Mixin holding a layer's rule, scale, seed and rule state (see FeedbackConv2d)."""

    weight: Tensor
    _buffers: dict[str, Tensor | None]

    def _init_feedback(self, rule: str, scale: str, seed: int | None) -> None:
        self._rule: FeedbackRule = get_rule("bp")
        self._scale: Scale = get_scale(scale)
        self._seed = random_seed() if seed is None else int(seed)
        self._constant = 1.0  # s of uSF for non-adaptive scales
        self._bound = 1.0  # a of the random draws
        self._exact_depth = 0  # > 0 inside exact_gradients()
        self._resample_count: int | None = None  # not None inside resampling()
        self._host: tuple | None = None  # host copy of brsf's (seed, draws), see _brsf_state
        self._hashed = False  # brsf's last draw was made under torch.compile
        self._feedback = Feedback(self._rule, self._scale, self._constant)  # see set_rule
        self._output_dim: int | None = None  # dfa: the network's output size D
        self._rank: int | None = None  # ldfa: the rank of B
        self._direct = None  # dfa: the root's DirectFeedback (sslr.feedback.direct)
        self.set_rule(rule, scale)

    # -- public attributes ---------------------------------------------------------------

    @property
    def rule(self) -> str:
        """Name of the learning rule (assigning a name switches it, like ``set_rule``)."""
        return self._rule.name

    @rule.setter
    def rule(self, rule: str) -> None:
        self.set_rule(rule)

    @property
    def scale(self) -> str:
        """Name of the feedback scale."""
        return self._scale.name

    @property
    def seed(self) -> int:
        """The layer's seed: fa/frsf draw M from it, brsf every B."""
        if self._rule.resamples:
            return self._brsf_state()[0]
        return self._seed

    def set_rule(self, rule: str, scale: str | None = None) -> None:
        """Switch rule (and scale) in place: same parameters, buffers added/removed as needed.

        fa/frsf draw M deterministically from the layer's seed; brsf starts its draw counter
        at 0 (kept when the layer already is brsf).
        """
        new_rule = get_rule(rule)
        new_scale = self._scale if scale is None else get_scale(scale)
        if new_rule is self._rule and new_scale is self._scale and self._state_complete():
            return
        seed = self.seed  # read before brsf's buffers go
        keep_draws = new_rule.resamples and self._rule.resamples and _DRAWS in self._buffers
        if new_rule.direct and self.__dict__.get("_output_dim") is None:
            raise ValueError(
                "dfa needs the network's output size: set it on the whole model "
                "(convert_model(model, 'dfa') or set_rule(model, 'dfa'), output_dim=...)"
            )
        for name in ("feedback_weight", "feedback_magnitude", "feedback_direct", _MIRRORS):
            self._buffers.pop(name, None)
        if not keep_draws:
            for name in (_SEED, _DRAWS):
                self._buffers.pop(name, None)
        w = self.weight
        template = w  # B's shape; dfa's B projects the output error: (D, in, kh, kw) or (D, in)
        if new_rule.direct:
            template = torch.empty((self._output_dim, *self._direct_in_shape()), device="meta")
        if new_rule.fixed_buffer is not None:
            key = zlib.crc32((new_rule.draws_as or new_rule.name).encode())
            generator = cpu_generator(derive_seed(seed, FIXED, key))
            if new_rule.low_rank:
                rank = self.__dict__.get("_rank")
                if rank is None:
                    raise ValueError(
                        f"{new_rule.name} needs a feedback rank: set it on the whole model "
                        f"(convert_model(model, {new_rule.name!r}, rank=...) or set_rule)"
                    )
                m = new_rule.draw_low_rank(template, new_scale, generator, rank)
                self.__dict__["_drawn_rank"] = rank
            else:  # CPU float64: the same values on any device
                m = new_rule.draw_fixed(template, new_scale, generator)
            dtype = w.dtype if w.is_floating_point() else torch.get_default_dtype()
            self.register_buffer(new_rule.fixed_buffer, m.to(device=w.device, dtype=dtype))
        if new_rule.learns == "mirror":
            self.register_buffer(_MIRRORS, torch.zeros((), dtype=torch.int64, device=w.device))
        if new_rule.resamples and not keep_draws:
            self.register_buffer(_SEED, torch.tensor(seed, dtype=torch.int64, device=w.device))
            self.register_buffer(_DRAWS, torch.zeros((), dtype=torch.int64, device=w.device))
        self._rule, self._scale, self._seed, self._host = new_rule, new_scale, seed, None
        self._bound = new_scale.bound(template)
        self._constant = 0.0 if new_scale.adaptive else new_scale.constant(w)
        self._feedback = Feedback(new_rule, new_scale, self._constant)  # what B is made of

    def _direct_in_shape(self) -> tuple[int, ...]:
        # dfa's B: all input channels (the projection is dense, whatever the layer's groups)
        w = self.weight
        if w.dim() == 4:
            return (w.shape[1] * getattr(self, "groups", 1), *w.shape[2:])
        return (w.shape[1],)

    def _state_complete(self) -> bool:
        r = self._rule
        if r.fixed_buffer is not None and r.fixed_buffer not in self._buffers:
            return False
        if r.learns == "mirror" and _MIRRORS not in self._buffers:
            return False
        if r.direct and self._buffers[r.fixed_buffer].shape[0] != self._output_dim:
            return False  # another output size asked for: redraw
        if r.low_rank and self.__dict__.get("_drawn_rank") != self._rank:
            return False  # another rank asked for: redraw
        return not r.resamples or (_SEED in self._buffers and _DRAWS in self._buffers)

    # -- B -------------------------------------------------------------------------------

    def _uses_feedback(self) -> bool:
        return not (self._rule.exact or self._exact_depth)

    def _feedback_state(self) -> tuple[Tensor | None, Draw | None]:
        """The rule's random tensor for this forward, or the spec of a draw in the backward.

        brsf advances its draw counter for a training forward. Inside torch.compile the draw
        is a hash of (seed, counter, index) made in the backward on the device, which fuses
        into B's kernel: no graph break, no host work (see functional.Draw).
        """
        rule = self._rule
        if rule.fixed_buffer is not None:
            return self._buffers[rule.fixed_buffer], None
        if not rule.resamples:
            return None, None
        if torch.compiler.is_compiling() and self._resample_count is None:
            self._hashed = True
            seed, draws = self._buffers[_SEED], self._buffers[_DRAWS]
            return None, Draw(seed, draws, self._bound, self.training)
        return self._draw_magnitude(), None

    def _hashed_magnitude(self) -> Tensor:
        # The draw a compiled forward made last (see _feedback_state).
        seed, draws = self._buffers[_SEED], self._buffers[_DRAWS]
        return hashed_uniform_like(self.weight.detach(), self._bound, seed, draws)

    @torch.compiler.disable  # a host-side generator seeded per draw: kept out of graphs
    def _draw_magnitude(self) -> Tensor:
        # Plain attributes are written through __dict__ on this path (every layer, every
        # step): nn.Module.__setattr__ costs about 2 microseconds a write here, __dict__ 0.2.
        seed, draws = self._brsf_state()
        if self._hashed:
            self._hashed = False
        if self.training:  # a new batch: a new B
            draws += 1
            self._set_draws(seed, draws)
            key = derive_seed(seed, TRAIN, draws)
        elif self._resample_count is not None:  # attacks: a fresh B per forward
            key = derive_seed(seed, RESAMPLE, draws, self._resample_count)
            self.__dict__["_resample_count"] = self._resample_count + 1
        else:  # eval: the current draw, unchanged
            key = derive_seed(seed, TRAIN, draws)
        return uniform_like(self.weight.detach(), 0.0, self._bound, key)

    def _brsf_state(self) -> tuple[int, int]:
        # (seed, draws) on the host, so a draw needs no device sync. The buffers are the
        # truth: reread them when replaced or written in place (load_state_dict, .to(),
        # DDP's broadcast), which their identity and _version reveal.
        s, d = self._buffers[_SEED], self._buffers[_DRAWS]
        h = self._host
        if h is None or h[0] is not s or h[1] != s._version or h[2] is not d or h[3] != d._version:
            h = self.__dict__["_host"] = (s, s._version, d, d._version, int(s), int(d))
        return h[4], h[5]

    def _set_draws(self, seed: int, draws: int) -> None:
        s, d = self._buffers[_SEED], self._buffers[_DRAWS]
        d.fill_(draws)
        self.__dict__["_host"] = (s, s._version, d, d._version, seed, draws)

    def feedback_matrix(self) -> Tensor:
        """B as the layer's backward would use it now (detached; brsf: the current draw)."""
        w = self.weight.detach()
        if not self._uses_feedback():
            return w
        rule, aux = self._rule, None
        if rule.fixed_buffer is not None:
            aux = self._buffers[rule.fixed_buffer]
        elif rule.resamples and self._hashed:  # the last draw was under torch.compile
            aux = self._hashed_magnitude()
        elif rule.resamples:
            seed, draws = self._brsf_state()
            aux = uniform_like(w, 0.0, self._bound, derive_seed(seed, TRAIN, draws))
        with torch.no_grad():
            return rule.matrix(w, aux, self._scale, self._constant)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rule={self.rule!r}, scale={self.scale!r}"
