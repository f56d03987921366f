from .iresnet import IResNet, build_iresnet, load_arcface_state_dict, read_state_dict

__all__ = ["IResNet", "build_iresnet", "load_arcface_state_dict", "read_state_dict"]
