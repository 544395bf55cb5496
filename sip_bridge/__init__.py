"""sip_bridge: SIP user agent (sans-IO core + asyncio adapter), SDP, RTP media, gateway."""
