"""Model zoo: Z2Color, SqueezeNet, AlexNet, PilotNet and recurrent SqueezeNet/Z2Color/PilotNet LSTM/GRU drivers.

Every model follows the interface in :mod:`driver.models.base`; build them by name with
:func:`create_model` and list them with :func:`list_models`. The family modules are imported here
explicitly, which registers their builders.
"""

from driver.models.alexnet import AlexNet, build_alexnet
from driver.models.base import DrivingModel, RecurrentState, SpeedRequired, detach_state
from driver.models.fire import Fire
from driver.models.pilotnet import PilotNet, build_pilotnet
from driver.models.recurrent import (
    RECURRENT_ARCHS,
    RecurrentDriver,
    build_pilotnet_gru,
    build_pilotnet_lstm,
    build_squeezenet_gru,
    build_squeezenet_lstm,
    build_z2color_gru,
    build_z2color_lstm,
    is_recurrent_arch,
    legacy_kwargs,
    takes_speed_input,
)
from driver.models.registry import create_model, list_models, register_model
from driver.models.spec import LAB_MODES, InputSpec
from driver.models.squeezenet import SqueezeNet, build_squeezenet
from driver.models.summary import count_parameters, flops_per_frame, format_model_table, model_rows
from driver.models.z2color import Z2Color, build_z2color

__all__ = [
    "RECURRENT_ARCHS",
    "is_recurrent_arch",
    "takes_speed_input",
    "LAB_MODES",
    "AlexNet",
    "DrivingModel",
    "Fire",
    "InputSpec",
    "PilotNet",
    "RecurrentDriver",
    "RecurrentState",
    "SpeedRequired",
    "SqueezeNet",
    "Z2Color",
    "build_alexnet",
    "build_pilotnet",
    "build_pilotnet_gru",
    "build_pilotnet_lstm",
    "build_squeezenet",
    "build_squeezenet_gru",
    "build_squeezenet_lstm",
    "build_z2color",
    "build_z2color_gru",
    "build_z2color_lstm",
    "count_parameters",
    "create_model",
    "detach_state",
    "flops_per_frame",
    "format_model_table",
    "legacy_kwargs",
    "list_models",
    "model_rows",
    "register_model",
]
