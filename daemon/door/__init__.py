"""The door service: the decision state machine, the daemon that carries its decisions out, actions, liveness, systemd notification and MQTT."""
