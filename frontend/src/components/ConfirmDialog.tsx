import { useEffect, useRef } from "react";

/** A modal question with Confirm / Cancel (Escape cancels); focus starts on Cancel, the safe choice. */
export function ConfirmDialog(props: {
  title: string;
  message: string;
  confirmLabel: string;
  danger?: boolean;
  busy?: boolean;
  onConfirm: () => void;
  onCancel: () => void;
}) {
  const cancel = useRef<HTMLButtonElement>(null);
  useEffect(() => {
    cancel.current?.focus();
  }, []);
  return (
    <div className="modal-backdrop" onKeyDown={(e) => e.key === "Escape" && props.onCancel()}>
      <div className="card modal" role="dialog" aria-modal="true" aria-labelledby="confirm-title" aria-describedby="confirm-message">
        <h2 id="confirm-title">{props.title}</h2>
        <p id="confirm-message">{props.message}</p>
        <div className="actions" style={{ justifyContent: "flex-end" }}>
          <button type="button" ref={cancel} onClick={props.onCancel}>
            Cancel
          </button>
          <button type="button" className={props.danger ? "danger" : "primary"} disabled={props.busy} onClick={props.onConfirm}>
            {props.confirmLabel}
          </button>
        </div>
      </div>
    </div>
  );
}
