"""The fusion networks: SRSM (relighting), DASM (deformable alignment), DRM (detail repletion).

Every module is written once against :class:`crmef.space.Choice`; it receives, per slot, the
tuple of candidate op names — several while searching, one once derived.
"""

from crmef.nets.fusion import FusionNet, NetConfig

__all__ = ["FusionNet", "NetConfig"]
