"""model: LFM2-Audio-1.5B and LFM2.5-Audio-1.5B implemented in-project (checkpoint loading, encoder,
backbone, depthformer, Mimi and the LFM2.5 detokenizer, tokenizer, generation) and the real-time Engine."""
