"""`training.machines`: several machines training one run (the launcher reads it; engine.training.launch)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class MachinesSpec(BaseModel):
    """Several machines training one run (`accelerate launch` multi-node): every machine starts the same
    spec with its own `rank`; machine 0 writes the run folder and the others join it."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)  # as every spec section

    count: int = Field(1, ge=1, le=1024, description="Machines taking part; each runs `training.devices` processes.")
    rank: int = Field(0, ge=0, description="This machine's number: 0 on the main machine, 1 … count-1 on the others.")
    main_address: str = Field(
        "127.0.0.1", description="Address of machine 0 that the others connect to (a host name or IP)."
    )
    main_port: int = Field(29500, ge=1024, le=65535, description="Free TCP port on machine 0 for the rendezvous.")
    hosts: list[str] = Field(
        default_factory=list,
        description="Host names, machine 0 first (optional: they set count and main_address, and go into the "
        "Slurm and SkyPilot files).",
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return cls.as_mapping(value)

    @staticmethod
    def as_mapping(value: Any) -> Any:
        """`machines: 2` is a count; `machines: [a, b]` a host list whose first one is the main machine;
        `hosts: a,b` (`--set training.machines.hosts=a,b`) the list [a, b]."""
        if isinstance(value, bool):
            return value  # rejected below, not read as 0 or 1
        if isinstance(value, int):
            return {"count": value}
        if isinstance(value, list):
            value = {"hosts": value}
        if isinstance(value, dict) and isinstance(value.get("hosts"), str):
            value = {**value, "hosts": [h.strip() for h in value["hosts"].split(",") if h.strip()]}
        if isinstance(value, dict) and value.get("hosts") and isinstance(value["hosts"], list):
            return {"count": len(value["hosts"]), "main_address": str(value["hosts"][0]), **value}
        return value

    @model_validator(mode="after")
    def _consistent(self) -> MachinesSpec:
        if self.rank >= self.count:
            raise ValueError(f"rank {self.rank} is not one of the {self.count} machines (0 … {self.count - 1})")
        if self.hosts and len(self.hosts) != self.count:
            raise ValueError(f"{len(self.hosts)} hosts listed for {self.count} machines")
        return self
