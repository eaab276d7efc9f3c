"""The targets the harness is held to (issue 15); the verdicts check them on the bound of a 95% interval.

Kept apart from the code that measures, so that the verdicts and their tests need no TensorFlow.
"""

VS_MINIMAL = 0.97  # harness / (minimal + checkpoint), every setting, lower bound
VS_KERAS = 1.0  # harness / Keras fit, wherever Keras runs, lower bound
VS_KERAS_MLP_K1 = 1.5  # harness / Keras fit, small MLP, K=1, lower bound
ASYNC_STALL = 0.10  # async checkpoint: time it blocks the loop / synchronous save time
DECISION_OVERHEAD = 0.02  # 2-worker cluster: the decision point per K-step loop / the step at K=1, upper bound
