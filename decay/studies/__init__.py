"""Studies: experiments built on the engine through its public names, each on the one resumable runner.

  depth_sweep  depths x activations x norms x seeds: per-layer gradient flow and trainability
  phase        the order-to-chaos phase diagram with measured trainability
  claims       the seed's claims C1-C8, each settled by measurement
  doctor       proposes the fix of one configuration and verifies it by training
  time_sweep   recurrent nets along time: variants x sequence lengths on the adding problem

The engine (`decay.step`, `program`, `loop`, `row`, `runner`) never imports a study.
"""
