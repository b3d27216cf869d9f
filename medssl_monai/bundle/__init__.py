"""What bundle configs call (where a bundle lives, the demo defaults), the pre-training configs' composition from
their shared source, and packing a bundle for sharing."""

from medssl_monai.bundle.compose import compose_config, composed_pretrain_configs
from medssl_monai.bundle.defaults import demo_data_dir, demo_encoder
from medssl_monai.bundle.pack import pack_bundle
from medssl_monai.bundle.roots import bundle_default, bundle_root, demo_root

__all__ = ["bundle_default", "bundle_root", "compose_config", "composed_pretrain_configs", "demo_data_dir",
           "demo_encoder", "demo_root", "pack_bundle"]
