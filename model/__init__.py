"""model: LFM2-Audio-1.5B implemented in-project (checkpoint loading, encoder, backbone,
depthformer, Mimi decoder, tokenizer, generation) and the real-time Engine."""
