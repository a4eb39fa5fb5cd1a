"""Using a trained model: the K-follow-up sampler (`sampler`), the sample stage of a run
(`sample_stage`), the load-once `NAMDPipeline` and its model folder (`pipeline`, `model_card`),
one patient's prediction (`prediction`, `patient`) and the crop from a whole scan (`scan`).
Never imports namd.training: using a model needs none of the code that trains it."""
