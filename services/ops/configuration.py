"""Which process reads which `HOMEWARD_*` variable: one settings class per process, by concern.
The README's configuration table is checked against this (tests/unit/test_settings.py)."""

from services.arrival.settings import ArrivalSettings, AttestationKeys
from services.devstack.settings import DevstackSettings
from services.disbursement.settings import DisbursementSettings, ProgramCurrency
from services.ops.common import OpsSettings, RolePasswords
from services.registration.settings import RegistrationSettings
from services.runtime.settings import HomewardSettings, PiiRetention, SealedData
from services.sandbox.settings import PayoutSandboxSettings, TravelSandboxSettings
from services.travel.settings import TravelSettings

READERS: dict[str, tuple[type[HomewardSettings], ...]] = {
    "registration": (RegistrationSettings,),
    "travel": (TravelSettings,),
    "arrival": (ArrivalSettings,),
    "disbursement": (DisbursementSettings,),
    "sandbox-payouts": (PayoutSandboxSettings,),
    "sandbox-travel": (TravelSandboxSettings,),
    "up": (DevstackSettings,),
    # `homeward ledger fund` reads the program's currency, `homeward roles` the roles' passwords,
    # `homeward retention run` the retention, `homeward keys rewrap` a service's data keys,
    # `homeward attestation` the attestation keys.
    "commands": (OpsSettings, ProgramCurrency, RolePasswords, PiiRetention, SealedData, AttestationKeys),
}


def variable(field: str) -> str:
    return f"HOMEWARD_{field.upper()}"


def readers() -> dict[str, set[str]]:
    """Every variable, and the processes that read it."""
    found: dict[str, set[str]] = {}
    for process, classes in READERS.items():
        for settings_class in classes:
            for field in settings_class.model_fields:
                found.setdefault(variable(field), set()).add(process)
    return found
