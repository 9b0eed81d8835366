"""The model API: layers, Sequential, losses, optimizers, schedules, callbacks and the training
loop. Imports the engine, kernels and io; never integrations or tools."""
